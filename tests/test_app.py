"""The Hydra app end to end: composition, task=evaluate, one-line user errors."""
import re

import numpy as np
import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import write_latency_csv
from blockprof.core.registry import build_space

from conftest import REPO, run_cli


def test_evaluate_pn_note10_tracks_to_mlflow(cfg_factory, tmp_path):
    cfg = cfg_factory("task=evaluate", "space=pn", "device=note10", "task.num_archs=30", "tracking=local")
    df = execute(cfg, run_dir=tmp_path / "run")
    table = pd.read_csv(tmp_path / "run" / "archs.csv")
    assert len(table) == 30 and {"arch", "resolution", "mmacs", "params_m", "latency"} <= set(table.columns)
    assert "accuracy" not in table.columns  # no public predictor for pn: skipped with a notice
    assert (table["latency"] > 0).all()
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("blockprof/evaluate")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["task"] == "evaluate" and run.data.tags["space"] == "pn"
    assert run.data.params["task.num_archs"] == "30"
    assert run.data.metrics["latency_mean"] == pytest.approx(df["latency"].mean())
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"archs.csv", "config.yaml"} <= arts
    mlflow.set_tracking_uri(None)


def test_evaluate_reads_archs_from_seed_csv(cfg_factory, tmp_path):
    space = build_space("mbv3")
    archs = space.sample(np.random.default_rng(0), 5)
    csv = write_latency_csv(tmp_path / "in.csv", [(i, a, "npu", 1.0) for i, a in enumerate(archs)])
    cfg = cfg_factory("task=evaluate", f"task.archs_csv={csv}", "tracking=none")
    df = execute(cfg, run_dir=tmp_path / "run")
    assert list(df["arch"]) == [a.text for a in archs]
    assert df["accuracy"].between(60, 90).all()


@pytest.mark.parametrize("overrides,needle", [
    (["space=resnet50", "device=note10", "metric=efficiency"], "no latency lookup table for space resnet50 (spaces with one: mbv3, pn)"),
    (["space=mbv3_w10", "metric=no_latency"], "no public accuracy predictor for space mbv3_w10"),
    (["metric.names=[accuracy,flops]"], "unknown metric(s) ['flops']"),
    (["task=evaluate", "task.num_archs=0"], "num_archs must be >= 1"),
    (["task.blocks=[[9,0,3,3]]", "task.all=false"], "unit 9 out of range"),
])
def test_bad_combinations_fail_at_start(cfg_factory, tmp_path, overrides, needle):
    cfg = cfg_factory(*overrides, "tracking=local")
    with pytest.raises(UserError, match=re.escape(needle)):
        execute(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "samples.csv").exists()


@pytest.mark.parametrize("args,needle", [
    (["space=mbv3x"], "error: unknown space 'mbv3x' (choose from: mbv3, mbv3_w10, pn, resnet50)"),
    (["device=iphone"], "error: unknown device 'iphone'"),
    (["task.num_archz=5"], "error: unknown config key 'task.num_archz' (known here: name, needs_metrics"),
    (["task=evaluate", "space=resnet50", "device=note10", "metric=efficiency"], "error: device note10 has no latency lookup table for space resnet50"),
])
def test_cli_user_errors_are_one_line(tmp_path, args, needle):
    res = run_cli([*args, f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(needle), res.stderr


def test_cli_evaluate_writes_run_folder(tmp_path):
    res = run_cli(["task=evaluate", "task.num_archs=10", "tracking=none", f"paths.output_root={tmp_path}/out"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    tables = list((tmp_path / "out" / "runs" / "evaluate").glob("*/*/archs.csv"))
    assert len(tables) == 1 and len(pd.read_csv(tables[0])) == 10
    assert (REPO / "conf" / "config.yaml").exists()


def test_console_script_runs_from_any_folder(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "blockprof"
    if not exe.exists():
        exe = shutil.which("blockprof")
    assert exe, "the blockprof console script is installed with the package"
    res = subprocess.run([str(exe), "task=evaluate", "task.num_archs=2", "tracking=none",
                          f"paths.output_root={tmp_path}/out"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "out").rglob("archs.csv"))
