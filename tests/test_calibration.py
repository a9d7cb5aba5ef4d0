"""Calibrate once, predict everywhere: a measured device scores through a GNN fitted on this
machine's own timings (real timing, real training, a real SQLite store; a tiny calibration set)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from blockprof.app.calibration import CalibratedLatency
from blockprof.app.main import execute
from blockprof.app.metric_factory import build_metrics
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import read_latency_csv
from blockprof.core.registry import build_space
from blockprof.metrics.measured import MeasuredLatency

TINY = ["device=local_cpu", "space.resolutions=[160]", "metric.names=[latency]", "device.latency.calib_archs=12",
        "device.latency.calib_rounds=2", "device.latency.calib_retest=4", "device.latency.references=1",
        "device.latency.allow_small_test=true", "+device.latency.train.max_epochs=8",
        "+device.latency.train.hidden=8", "device.latency.retime_rounds=1"]


def _tags(tmp_path, task):
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r.data.tags for r in runs if r.data.tags.get("task") == task]


def test_calibrates_once_then_reuses_and_rescales(cfg_factory, tmp_path):
    data = tmp_path / "data"
    over = ["task=evaluate", "task.num_archs=6", f"paths.data_dir={data}", "tracking=local", *TINY]
    # no drift rescaling for the first two runs: the same archs must get the same milliseconds
    df = execute(cfg_factory(*over, "device.latency.rescale_threshold=100"), run_dir=tmp_path / "r1")
    csvs, ckpts = sorted((data / "calibration").glob("*_[0-9a-f]*[0-9a-f].csv")), sorted((data / "calibration").glob("*_gnn.pt"))
    assert len(csvs) == 1 and len(ckpts) == 1 and len(read_latency_csv(csvs[0], build_space("mbv3"))) == 12
    side = json.loads(ckpts[0].with_suffix(".json").read_text())
    assert side["test_n"] >= 1 and side["reference"]["baseline_ms"] and side["floor_mape"] is not None
    assert len(df) == 6 and (df["latency"] > 0).all()
    calibrations = _tags(tmp_path, "calibrate")
    served = _tags(tmp_path, "evaluate")[0]
    assert len(calibrations) == 1 and served["latency.served_by"].startswith("models:/blockprof-latency-mbv3-local_cpu-")
    assert float(served["latency.held_out_mape"]) == pytest.approx(side["test_mape"], rel=1e-3)

    stamp = csvs[0].stat().st_mtime_ns
    df2 = execute(cfg_factory(*over, "device.latency.rescale_threshold=100"), run_dir=tmp_path / "r2")
    assert csvs[0].stat().st_mtime_ns == stamp and len(_tags(tmp_path, "calibrate")) == 1  # reused, not re-timed
    assert np.allclose(df2["latency"], df["latency"])

    # threshold 0: every speed change since calibration rescales the predictions
    df3 = execute(cfg_factory(*over, "device.latency.rescale_threshold=0"), run_dir=tmp_path / "r3")
    factor = float(_tags(tmp_path, "evaluate")[0]["latency.rescale"])  # newest run first
    assert factor != 1.0 and np.allclose(df3["latency"], df["latency"] * factor, rtol=1e-4)

    # a search runs on the predictor, then times (part of) its final front directly
    out = execute(cfg_factory("task=search", f"paths.data_dir={data}", "tracking=local", *TINY,
                              "metric.names=[accuracy,latency]", "search.budget=40", "search.init_size=20",
                              "search.budget_per_iter=20", "search.iterations=1", "search.plot=false",
                              "device.latency.verify_front=3", "device.latency.repeats=2", "device.latency.warmup=0",
                              "device.latency.rescale_threshold=100"), run_dir=tmp_path / "s")
    fm = out["front_measured"]
    assert len(_tags(tmp_path, "calibrate")) == 1  # the search reused the calibration too
    assert fm["front_measured_n"] == min(3, len(out["front"])) and fm["front_measured_mape"] >= 0
    table = fm["table"]
    assert (table["latency_measured"] > 0).all() and table["on_measured_front"].any()
    assert np.allclose(table["error_pct"], (table["latency_predicted"] / table["latency_measured"] - 1) * 100)
    assert (tmp_path / "s" / "front_measured.csv").is_file()

    # source=measured keeps direct timing; the calibrated metric is the default
    cfg = cfg_factory(*over)
    assert isinstance(build_metrics(cfg, build_space("mbv3", resolutions=[160]))["latency"], CalibratedLatency)
    cfg = cfg_factory(*over, "device.latency.source=measured")
    assert isinstance(build_metrics(cfg, build_space("mbv3", resolutions=[160]))["latency"], MeasuredLatency)


def test_a_calibration_set_too_small_to_test_is_refused(cfg_factory, tmp_path):
    data = tmp_path / "data"
    over = [o for o in TINY if "allow_small_test" not in o]
    with pytest.raises(UserError) as exc:
        execute(cfg_factory("task=evaluate", "task.num_archs=2", f"paths.data_dir={data}", "tracking=none", *over),
                run_dir=tmp_path / "run")
    assert "\n" not in str(exc.value) and "device.latency.allow_small_test=true" in str(exc.value)
    assert not data.exists() and not (tmp_path / "run").exists()


def test_a_coverage_calibration_holds_out_random_archs(cfg_factory, tmp_path):
    import torch
    from blockprof.app.tasks.measure import sample_archs
    data = tmp_path / "data"
    over = ["task=evaluate", "task.num_archs=2", f"paths.data_dir={data}", "tracking=none", *TINY,
            "device.latency.calib_select=coverage", "device.latency.calib_rounds=1", "device.latency.calib_retest=2"]
    execute(cfg_factory(*over), run_dir=tmp_path / "run")
    ckpt = next((data / "calibration").glob("*_coverage_gnn.pt"))
    side = json.loads(ckpt.with_suffix(".json").read_text())
    assert side["select"] == "coverage"
    listed = next((data / "calibration").glob("*.coverage.archs.csv")).read_text().splitlines()
    space = build_space("mbv3", resolutions=[160])
    seeded = sample_archs(space, int(np.random.default_rng(0).integers(2 ** 31)), 2)
    # held out: the first (random) archs of the seeded sample; trained on: chosen ones
    assert [line.split(",")[1] for line in listed[1:3]] == [a.text for a in seeded]
    split = torch.load(ckpt, weights_only=True)["data"]["split_sizes"]
    assert len(listed) == 13 and split[2] == 2 and sum(split) == 12  # round(0.2 * 12) = 2 held out
