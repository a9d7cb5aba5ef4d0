"""The seed's latency CSVs on first use: `device=npu|gpu|cpu` with neither a CSV nor a
checkpoint fetches the seed's published CSV into the data folder, checks it, then trains.

The authors' Drive folder cannot be reached from a test: offline is tested for real
(no network, or a proxy that refuses), and `$BLOCKPROF_SEED_DATA` points at a local
folder standing in for the Drive folder."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from blockprof.app.latency_data import SEED_DATA_ENV, fetch_seed_csv
from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.common.fileio import sha256_file
from blockprof.core.registry import build_space
from blockprof.metrics.lut import note10_latency
from blockprof.predictors.latency import SEED_DATA_URL
from blockprof.predictors.train import load_checkpoint
from conftest import compose, run_cli

OFFLINE = {SEED_DATA_ENV: "", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}


def _seed_csv(path, n=60, seed=0, device="npu"):
    """A CSV in the seed's published layout (microseconds), latencies from the real Note10 tables."""
    space = build_space("mbv3")
    archs = space.sample(np.random.default_rng(seed), n)
    lat_ms = note10_latency(space).evaluate(archs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["net_id", "net_str", "device", "resolution", "lat unit", "end-to-end lat"])
        for i, (a, ms) in enumerate(zip(archs, lat_ms)):
            w.writerow([i, a.text, device, a.resolution, "us", f"{ms * 1e3:.1f}"])
    return path


def _one_error(p) -> str:
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return errors[0]


def test_offline_stops_with_one_line_naming_folder_and_file(tmp_path):
    data = tmp_path / "data"
    p = run_cli(["task=evaluate", "space=mbv3", "device=npu", f"paths.data_dir={data}",
                 f"paths.output_root={tmp_path / 'out'}", "tracking=none"], cwd=tmp_path, env=OFFLINE)
    err = _one_error(p)
    assert err.startswith("error: no latency data for space mbv3 on device npu")
    assert str(data / "ofa_mbv3_npu_lat_data.csv") in err and f"put ofa_mbv3_npu_lat_data.csv in {data}" in err
    assert "fetching it from the seed's Drive folder failed (no network connection" in err
    assert SEED_DATA_URL in err and "task=measure space=mbv3 device=local_cpu" in err
    assert not data.exists()  # nothing half-fetched, not even an empty folder


def test_stand_in_folder_is_fetched_checked_and_trained_on(tmp_path, monkeypatch):
    standin = tmp_path / "drive"
    src = _seed_csv(standin / "nested" / "ofa_mbv3_npu_lat_data.csv")
    monkeypatch.setenv(SEED_DATA_ENV, str(standin))
    data = tmp_path / "data"
    cfg = compose(["task=evaluate", "task.num_archs=6", "space=mbv3", "device=npu", f"paths.data_dir={data}",
                   "+device.latency.train.max_epochs=4", "+device.latency.train.hidden=8", "tracking=none",
                   "device.latency.allow_small_test=true"],
                  tmp_path / "o")
    df = execute(cfg, run_dir=tmp_path / "run")
    fetched = data / "ofa_mbv3_npu_lat_data.csv"
    assert fetched.read_bytes() == src.read_bytes()
    assert [p.name for p in data.iterdir() if p.name.startswith(".")] == []  # no staging file left
    # ...then the predictor was trained on it (nested in the run) and scored the archs
    ckpt = data / "predictors" / "mbv3_npu_gnn.pt"
    _, meta = load_checkpoint(ckpt, build_space("mbv3"))
    assert meta["data"]["rows"] == 60 and meta["data"]["sha256"] == sha256_file(fetched)
    assert (tmp_path / "run" / "train_predictor").is_dir()
    assert len(df) == 6 and (df["latency"] > 0).all()
    # the second run loads the checkpoint: nothing fetched or trained again
    src.write_text("changed\n")
    df2 = execute(cfg, run_dir=tmp_path / "run2")
    assert np.allclose(df2["latency"], df["latency"]) and fetched.read_bytes() != src.read_bytes()


def test_train_predictor_fetches_too(tmp_path, monkeypatch):
    standin = tmp_path / "drive"
    _seed_csv(standin / "ofa_mbv3_gpu_lat_data.csv", n=30, seed=1, device="gpu")
    monkeypatch.setenv(SEED_DATA_ENV, str(standin))
    data = tmp_path / "data"
    out = execute(compose(["task=train_predictor", "space=mbv3", "device=gpu", f"paths.data_dir={data}",
                           "task.model=additive", "task.log_model=false", "tracking=none",
                           "task.allow_small_test=true"], tmp_path / "o"),
                  run_dir=tmp_path / "run")
    assert (data / "ofa_mbv3_gpu_lat_data.csv").is_file() and (data / "predictors" / "mbv3_gpu_additive.pt").is_file()
    assert np.isfinite(out["test"]["mape"])


def test_bad_or_missing_stand_in_files_are_one_line(tmp_path, monkeypatch):
    space = build_space("mbv3")
    data = tmp_path / "data"
    standin = tmp_path / "drive"
    monkeypatch.setenv(SEED_DATA_ENV, str(standin))
    cfg = compose(["space=mbv3", "device=cpu", f"paths.data_dir={data}", "tracking=none"], tmp_path / "o")
    dest = data / "ofa_mbv3_cpu_lat_data.csv"
    standin.mkdir()
    with pytest.raises(UserError) as exc:  # the folder lacks the file
        fetch_seed_csv(cfg, space, dest)
    msg = str(exc.value)
    assert "\n" not in msg and "holds no ofa_mbv3_cpu_lat_data.csv" in msg and str(standin) in msg
    bad = _seed_csv(standin / "ofa_mbv3_cpu_lat_data.csv", n=5, device="cpu")
    lines = bad.read_text().splitlines()
    lines[3] = lines[3].replace("mbconv3_", "mbconv9_", 1)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as exc:  # malformed: refused with its line, nothing lands in the data folder
        fetch_seed_csv(cfg, space, dest)
    msg = str(exc.value)
    assert "\n" not in msg and "not a valid seed CSV" in msg and "ofa_mbv3_cpu_lat_data.csv:4:" in msg
    assert not data.exists()


def test_unpublished_and_non_seed_devices_do_not_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv(SEED_DATA_ENV, str(tmp_path / "no-such-folder"))
    # the seed never published ResNet50 GPU/CPU data: said so, nothing fetched
    with pytest.raises(UserError) as exc:
        execute(compose(["task=evaluate", "space=resnet50", "device=gpu", f"paths.data_dir={tmp_path / 'd'}",
                         "tracking=none"], tmp_path / "o"), run_dir=tmp_path / "r")
    assert "have not published gpu data for resnet50" in str(exc.value)
    # a device of the user's own: the missing CSV is theirs to measure, not the seed's to fetch
    with pytest.raises(UserError) as exc:
        execute(compose(["task=evaluate", "space=mbv3", "device=local_cpu", "device.latency.source=predictor",
                         f"paths.data_dir={tmp_path / 'd'}", "tracking=none"], tmp_path / "o"), run_dir=tmp_path / "r")
    msg = str(exc.value)
    assert "ofa_mbv3_local_cpu_lat_data.csv" in msg and "fetching" not in msg
