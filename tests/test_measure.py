"""task=measure (real OFA subnets timed on this CPU, tiny settings) and the seed CSV reader."""
from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import HEADER, read_latency_csv
from blockprof.core.registry import build_space
from blockprof.app.tasks.measure import meta_path, rounds_path, sample_archs

TINY = ["task=measure", "space=mbv3", "device=local_cpu", "space.resolutions=[160]", "task.warmup=0",
        "task.rounds=2", "task.chunk_size=2", "task.references=1"]


def test_measure_writes_seed_csv_and_resumes(cfg_factory, tmp_path):
    csv = tmp_path / "lat.csv"
    cfg = cfg_factory(*TINY, "task.num_archs=3", "task.retest_archs=2", f"task.csv={csv}", "tracking=local")
    execute(cfg, run_dir=tmp_path / "run1")
    first = read_latency_csv(csv, build_space("mbv3", resolutions=[160]))
    assert [r.net_id for r in first] == [0, 1, 2]
    assert all(r.device == "local_cpu" and r.latency_ms > 0 for r in first)
    assert csv.read_text().splitlines()[0] == ",".join(HEADER)
    meta = json.loads(meta_path(csv).read_text())
    assert meta["machine"]["threads"] == 1 and meta["machine"]["cpu"] and meta["machine"]["torch"]
    assert meta["protocol"]["stat"] == "median" and meta["protocol"]["clock"] == "cpu"
    assert meta["protocol"]["rounds"] == 2 and meta["protocol"]["references"] == 1
    assert len(meta["reference"]["baseline_ms"]) == 1 and min(meta["reference"]["baseline_ms"]) > 0
    assert meta["sessions"][0]["drift_factor"]["min"] > 0
    assert meta["retest"]["retest_n"] == 2 and 0 <= meta["retest"]["retest_within10"] <= 100
    assert meta["retest"]["retest_mape"] >= 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("blockprof/measure").experiment_id])[0]
    assert run.data.tags["task"] == "measure" and run.data.tags["machine.cpu"] == meta["machine"]["cpu"]
    assert run.data.metrics["retest_mape"] == pytest.approx(meta["retest"]["retest_mape"])
    mlflow.set_tracking_uri(None)

    # a rerun with more archs keeps the measured rows and times only the new ids
    cfg = cfg_factory(*TINY, "task.num_archs=5", "task.retest_archs=0", f"task.csv={csv}", "tracking=none")
    execute(cfg, run_dir=tmp_path / "run2")
    rows = read_latency_csv(csv, build_space("mbv3", resolutions=[160]))
    assert [r.net_id for r in rows] == [0, 1, 2, 3, 4]
    assert rows[:3] == first
    meta = json.loads(meta_path(csv).read_text())
    assert [s["already_measured"] for s in meta["sessions"]] == [0, 3]
    assert [s["measured"] for s in meta["sessions"]] == [3, 2]
    rounds = rounds_path(csv).read_text().splitlines()
    measured = [line.split(",")[0] for line in rounds if ",measure," in line]
    assert sorted(int(i) for i in measured if int(i) >= 0) == [0, 1, 2, 3, 4]
    assert sum(1 for i in measured if int(i) == -1) == 3  # the reference, timed in every chunk
    assert sum(1 for line in rounds if ",retest," in line and not line.startswith("-")) == 2


def test_measure_refuses_to_mix_samples_or_protocols(cfg_factory, tmp_path):
    csv = tmp_path / "lat.csv"
    execute(cfg_factory(*TINY, "task.num_archs=1", "task.retest_archs=0", f"task.csv={csv}", "tracking=none"),
            run_dir=tmp_path / "r1")
    with pytest.raises(UserError, match="measured from another sample"):
        execute(cfg_factory(*TINY, "seed=1", "task.num_archs=2", "task.retest_archs=0", f"task.csv={csv}",
                            "tracking=none"), run_dir=tmp_path / "r2")
    with pytest.raises(UserError, match="measured with protocol"):
        execute(cfg_factory(*TINY, "task.clock=wall", "task.num_archs=2", "task.retest_archs=0", f"task.csv={csv}",
                            "tracking=none"), run_dir=tmp_path / "r3")
    assert len(read_latency_csv(csv, build_space("mbv3", resolutions=[160]))) == 1


def test_measure_needs_a_local_device_and_a_sound_clock(cfg_factory, tmp_path):
    with pytest.raises(UserError, match="device=local_cpu"):
        execute(cfg_factory("task=measure", "device=npu", "tracking=none"), run_dir=tmp_path / "r")
    with pytest.raises(UserError, match="needs hw cpu and 1 thread"):
        execute(cfg_factory(*TINY, "task.threads=2", "tracking=none"), run_dir=tmp_path / "r")


def test_sampling_is_prefix_stable_and_balanced():
    sp = build_space("mbv3")
    a, b = sample_archs(sp, 7, 25), sample_archs(sp, 7, 40)
    assert a == b[:25] and len(set(b)) == 40
    counts = np.unique([x.resolution for x in b], return_counts=True)[1]
    assert list(counts) == [8] * 5
    assert sample_archs(sp, 8, 5) != a[:5]


# ------------------------------------------------------------------ seed CSV reader: each malformed kind
GOOD = "mbconv3_e6_k7->mbconv3_e4_k5|mbconv3_e3_k3->mbconv3_e3_k3|mbconv3_e3_k3->mbconv3_e3_k3|" \
       "mbconv3_e3_k3->mbconv3_e3_k3|mbconv3_e3_k3->mbconv3_e3_k3"


@pytest.mark.parametrize("row,needle", [
    (f"1,{GOOD},npu,224,us", "expected 6 fields, found 5"),
    (f"1,{GOOD.replace('e4_k5', 'e5_k5')},npu,224,us,100", "unknown block 'mbconv3_e5_k5' at unit 0 layer 1"),
    (f"1,{GOOD.rsplit('|', 1)[0]},npu,224,us,100", "arch has 4 units, space has 5"),
    (f"1,{GOOD},npu,224,us,fast", "latency 'fast' is not a number"),
    (f"1,{GOOD},npu,224,us,-3", "must be a positive number"),
    (f"1,{GOOD},npu,224,minutes,100", "latency unit 'minutes'"),
    (f"1,{GOOD},npu,225,us,100", "resolution 225 is not in space mbv3"),
    (f"x,{GOOD},npu,224,us,100", "net_id 'x' is not an integer"),
    (f"0,{GOOD},npu,224,us,100", "duplicate net_id 0"),
    ("1,mbconv3_e6_k7|mbconv3_e3_k3->mbconv3_e3_k3|mbconv3_e3_k3->mbconv3_e3_k3|mbconv3_e3_k3->mbconv3_e3_k3|"
     "mbconv3_e3_k3->mbconv3_e3_k3,npu,224,us,100", "unit 0 has 1 layers, allowed 2..4"),
])
def test_reader_names_file_and_line_of_each_malformed_kind(tmp_path, row, needle):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(HEADER) + f"\n0,{GOOD},npu,224,us,12345.6\n{row}\n")
    with pytest.raises(UserError, match=re.escape(needle)) as exc:
        read_latency_csv(path, build_space("mbv3"))
    assert str(exc.value).startswith(f"{path}:3: ") and "\n" not in str(exc.value)


def test_reader_header_and_units(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("net_id,net_str,resolution\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:1: 3 columns; the seed's latency CSV has exactly 6")):
        read_latency_csv(path, build_space("mbv3"))
    path.write_text(",".join(HEADER) + f"\n0,{GOOD},npu,224,us,12345.6\n1,{GOOD},npu,160,s,0.5\n")
    recs = read_latency_csv(path, build_space("mbv3"))
    assert [r.latency_ms for r in recs] == pytest.approx([12.3456, 500.0])


# ------------------------------------------------------------------ engines, and few-shot training on their CSVs
def test_engine_device_measures_and_feeds_a_few_shot_predictor(cfg_factory, tmp_path):
    import torch

    csv, onnx = tmp_path / "ort.csv", tmp_path / "onnx"
    tiny = [*TINY[3:], "task.retest_archs=2", f"task.csv={csv}", "tracking=none", f"device.latency.cache_dir={onnx}"]
    execute(cfg_factory("task=measure", "space=mbv3", "device=ort_cpu", "task.num_archs=4", *tiny),
            run_dir=tmp_path / "m1")
    recs = read_latency_csv(csv, build_space("mbv3", resolutions=[160]))
    assert len(recs) == 4 and all(r.device == "ort_cpu" and r.latency_ms > 0 for r in recs)
    meta = json.loads(meta_path(csv).read_text())
    assert meta["engine"] == "onnxruntime" and meta["machine"]["onnxruntime"]
    assert meta["retest"]["retest_n"] == 2
    assert len(list(onnx.rglob("*.onnx"))) == 5  # four archs and the reference, exported once
    with pytest.raises(UserError, match="timed with engine onnxruntime, not openvino"):
        execute(cfg_factory("task=measure", "space=mbv3", "device=openvino_cpu", "task.num_archs=5", *tiny),
                run_dir=tmp_path / "m2")

    # a predictor for this engine, then one fine-tuned from it on 3 archs
    train = ["task=train_predictor", "space=mbv3", "device=ort_cpu", "space.resolutions=[160]", f"task.csv={csv}",
             "task.max_epochs=3", "task.log_model=false", "tracking=none", "task.split=[0.5,0.25,0.25]",
             "task.allow_small_test=true"]
    src = tmp_path / "src.pt"
    execute(cfg_factory(*train, f"task.checkpoint={src}"), run_dir=tmp_path / "t1")
    out = execute(cfg_factory(*train, f"task.checkpoint={tmp_path / 'ft.pt'}", f"task.init_from={src}",
                              "task.train_archs=2"), run_dir=tmp_path / "t2")
    ck = torch.load(tmp_path / "ft.pt", weights_only=True)
    assert ck["data"]["init_from"]["checkpoint"] == str(src) and ck["data"]["split_sizes"][0] == 2
    assert out is not None

    # a checkpoint of another feature version or space is refused in one line
    bad = torch.load(src, weights_only=True)
    bad["features"] = {**bad["features"], "feature_version": -1}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(UserError) as exc:
        execute(cfg_factory(*train, f"task.checkpoint={tmp_path / 'x.pt'}", f"task.init_from={tmp_path / 'bad.pt'}"),
                run_dir=tmp_path / "t3")
    assert "\n" not in str(exc.value) and "bad.pt" in str(exc.value)
    bad = torch.load(src, weights_only=True)
    bad["space"]["name"] = "pn"
    torch.save(bad, tmp_path / "bad2.pt")
    with pytest.raises(UserError, match="was trained for space pn"):
        execute(cfg_factory(*train, f"task.checkpoint={tmp_path / 'x.pt'}", f"task.init_from={tmp_path / 'bad2.pt'}"),
                run_dir=tmp_path / "t4")


# ------------------------------------------------------------------ devices side by side
def _summary(values: dict):
    import pandas as pd
    rows = [{"group": 0, "slot": "random", "unit": None, "layer": None, "block": "random", "resolution": None,
             "n": 4, "latency_mean": 10.0}]
    for i, ((u, lay, b), v) in enumerate(values.items(), start=1):
        rows.append({"group": i, "slot": f"u{u}l{lay}:{b}", "unit": u, "layer": lay, "block": b,
                     "resolution": None, "n": 4, "latency_mean": v})
    return pd.DataFrame(rows)


def test_devices_side_by_side_correlates_slot_means(tmp_path):
    from blockprof.infra.compare import compare_devices, main

    slots = [(u, lay, b) for u in (0, 1) for lay in (0, 1) for b in ("mbconv3_e3_k3", "mbconv3_e4_k5", "mbconv3_e6_k7")]
    base = {s: 10 + 5 * s[0] + s[1] + ["mbconv3_e3_k3", "mbconv3_e4_k5", "mbconv3_e6_k7"].index(s[2]) * 0.5
            for s in slots}
    flipped = {s: v if s[2] == "mbconv3_e4_k5" else base[(s[0], s[1], "mbconv3_e6_k7" if s[2] == "mbconv3_e3_k3"
                                                            else "mbconv3_e3_k3")] for s, v in base.items()}
    dirs = []
    for name, vals in (("mbv3-dev_a", base), ("mbv3-dev_b", {s: 3 * v for s, v in base.items()}),
                       ("mbv3-dev_c", flipped)):
        (tmp_path / name).mkdir()
        _summary(vals).to_csv(tmp_path / name / "summary.csv", index=False)
        dirs.append(tmp_path / name)
    res = compare_devices(dirs, tmp_path / "out")
    corr = res["correlation"]
    a, b, c = corr.index
    assert corr.loc[a, b] == pytest.approx(1.0)  # same pattern, 3x slower: same ranks
    assert corr.loc[a, c] < 1.0
    assert res["figure"].is_file() and (tmp_path / "out" / "device_rank_correlation.md").is_file()
    within = (tmp_path / "out" / "device_rank_correlation.md").read_text()
    assert "within each position" in within and "| -1.000 |" in within  # block order reversed at every position
    assert main(["--profile-run", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
