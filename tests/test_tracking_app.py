"""What an MLflow user and a Python API user see: params the task used, tags that were true,
readable run names and experiments, run.log's header, dead runs marked KILLED, MLflow's
chatter kept off the console, progress against a total."""
import logging
import os
import pydoc
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import blockprof
from blockprof.common.progress import progress
from blockprof.infra.tracking import track_run

from conftest import REPO

STAMP = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"


def test_api_run_is_tracked_like_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = blockprof.build_space("pn")
    archs = space.sample(np.random.default_rng(0), 34)
    pd.DataFrame({"net_id": range(34), "arch": [a.text for a in archs],
                  "resolution": [a.resolution for a in archs]}).to_csv("archs_in.csv", index=False)
    overrides = ["task=evaluate", "space=pn", "device=note10", "task.archs_csv=archs_in.csv", "paths.output_root=out"]
    df = blockprof.run(blockprof.compose(overrides))
    assert len(df) == 34
    # the command line's folder layout, with its run.log
    folders = list((tmp_path / "out" / "runs" / "evaluate" / "pn-note10").iterdir())
    assert len(folders) == 1 and re.fullmatch(STAMP + r"-\d{6}", folders[0].name)
    log = (folders[0] / "run.log").read_text().splitlines()
    assert "command: blockprof.run(blockprof.compose([" in log[0] and "overrides: task=evaluate space=pn" in log[1]
    assert "git commit:" in log[2] and any("MLflow run " in line for line in log)

    c = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("blockprof/evaluate")  # one experiment per task
    (run,) = c.search_runs([exp.experiment_id])
    assert re.fullmatch(f"evaluate-pn-note10-{STAMP}", run.info.run_name)
    p, t = run.data.params, run.data.tags
    # only what the task used: the real number of archs, the CSV it read, no class paths,
    # no accuracy keys (pn has no accuracy predictor: accuracy was skipped)
    assert p["task.num_archs"] == "34" and p["task.archs_csv"] == str(tmp_path / "archs_in.csv")
    assert p["metric.names"] == "['mmacs', 'params_m', 'latency']" and p["device.latency.source"] == "lut"
    assert not any("_target_" in k or k.startswith(("metric.accuracy", "search", "tracking", "paths")) for k in p)
    assert t["metrics"] == "mmacs,params_m,latency" and "search" not in t
    assert t["run_dir"] == f"runs/evaluate/pn-note10/{folders[0].name}"
    assert t["mlflow.note.content"].startswith("blockprof.run(blockprof.compose(['task=evaluate'")
    mlflow.set_tracking_uri(None)


def test_api_errors_are_user_errors_and_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(blockprof.UserError, match="unknown config key 'task.num_archz'"):
        blockprof.compose(["task.num_archz=5"])
    with pytest.raises(blockprof.UserError, match="unknown space 'mbv3x'"):
        blockprof.compose(["space=mbv3x"])
    with pytest.raises(blockprof.UserError, match="num_archs must be >= 1"):
        blockprof.run(blockprof.compose(["task=evaluate", "task.num_archs=0", "paths.output_root=out"]))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.log"))
    assert not (tmp_path / "out" / "mlflow.db").exists()


def test_module_lists_its_api():
    assert dir(blockprof) == sorted([*blockprof.__all__, "__version__"])
    text = pydoc.render_doc(blockprof, renderer=pydoc.plaintext)
    assert "__getattr__" not in text and "importlib" not in text
    assert "compose(overrides" in text and "score(cfg" in text
    assert all(getattr(blockprof, name).__doc__ for name in blockprof.__all__)


def _store_cfg(root):
    return OmegaConf.create({
        "tracking": {"backend": "local", "uri": None, "experiment": "bp", "artifact_root": None,
                     "experiment_per_task": True},
        "space": {"name": "mbv3"}, "device": {"name": "note10"}, "paths": {"output_root": str(root)}})


def test_a_dead_runs_mlflow_run_is_marked_killed(tmp_path):
    """A run killed with SIGKILL (no chance to close its run) is marked KILLED by the next
    run of its task, which finds its folder's lock left and unheld."""
    script = textwrap.dedent(f"""
        import os, signal
        from omegaconf import OmegaConf
        from blockprof.infra.tracking import track_run
        cfg = OmegaConf.create({OmegaConf.to_container(_store_cfg(tmp_path))!r})
        with track_run(cfg, {str(tmp_path / 'runs' / 'dead')!r}, "export") as tr:
            print(tr.run_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    dead = r.stdout.split()[0]
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert c.get_run(dead).info.status == "RUNNING"
    with track_run(_store_cfg(tmp_path), tmp_path / "runs" / "next", "export") as tr:
        # a live run of the same experiment is left alone
        assert c.get_run(tr.run_id).info.status == "RUNNING"
    dead_run = c.get_run(dead)
    assert dead_run.info.status == "KILLED" and tr.run_id in dead_run.data.tags["killed"]
    assert c.get_experiment(dead_run.info.experiment_id).name == "bp/export"
    mlflow.set_tracking_uri(None)


def test_mlflow_chatter_goes_to_run_log_not_the_console(tmp_path, capsys):
    from mlflow.utils.logging_utils import eprint

    handler = logging.FileHandler(tmp_path / "run.log")
    logging.getLogger().addHandler(handler)
    try:
        with track_run(_store_cfg(tmp_path), tmp_path / "runs" / "r", "train_predictor") as tr:
            capsys.readouterr()

            def chatter(m):
                eprint("Successfully registered model 'blockprof-latency'.")
                warnings.warn("Add type hints to the `predict` method", UserWarning)

            tr.call_mlflow(chatter)
            out = capsys.readouterr()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert "Successfully registered" not in out.err + out.out and "type hints" not in out.err + out.out
    text = (tmp_path / "run.log").read_text()
    assert "Successfully registered model 'blockprof-latency'." in text and "UserWarning: Add type hints" in text
    mlflow.set_tracking_uri(None)


def test_progress_without_a_terminal_logs_against_its_total(caplog):
    caplog.set_level(logging.INFO, logger="blockprof.progress")
    bar = progress(None, desc="search rm_pareto", total=500, every_s=0.1,
                   fmt="{desc}: evaluations {n} of budget {total} (iteration {it}{eta})", initial=100,
                   postfix={"it": 1})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["search rm_pareto: evaluations 100 of budget 500 (iteration 1, started)"]  # at once
    bar.update(200)
    time.sleep(0.35)  # no update meanwhile: the timer still reports
    bar.update(200)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.fullmatch(r"search rm_pareto: evaluations 300 of budget 500 \(iteration 1, \d+ s so far, "
                            r"about \d+ s left\)", m) for m in lines), lines
    assert re.fullmatch(r"search rm_pareto: evaluations 500 of budget 500 \(iteration 1, done in \d+ s\)", lines[-1])
    # a counter inside a running phase (a batch) stays quiet unless it lasts
    caplog.clear()
    outer = progress(None, desc="profiling", total=2, every_s=60)
    for _ in progress(range(3), desc="batch", every_s=60):
        pass
    outer.close()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["profiling", "profiling"]
