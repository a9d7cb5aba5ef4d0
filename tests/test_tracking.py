"""blockprof.tracking against a real SQLite MLflow store in tmp_path (no mocks, no network)."""

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from blockprof.common.errors import UserError  # noqa: E402
from blockprof.infra.tracking import prepare_store, resolve_output_root, track_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_cfg(root, **tracking):
    t = {"backend": "local", "uri": None, "experiment": "blockprof", "artifact_root": None,
         "request_timeout_s": 5, "max_retries": 1}
    t.update(tracking)
    return OmegaConf.create({
        "tracking": t, "space": {"name": "mbv3"}, "device": {"name": "note10"},
        "metric": {"names": ["mmacs"]}, "search": {"name": "evolution", "population": 8},
        "paths": {"output_root": str(root)}, "long": "x" * 7000,
        "hydra": {"job": {"name": "should-not-be-logged"}},
    })


def client_for(root):
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture
def store(tmp_path):
    """A prepared local store in tmp_path; no run is left active afterwards."""
    cfg = make_cfg(tmp_path)
    prepare_store(cfg)
    yield cfg
    while mlflow.active_run():
        mlflow.end_run()


def test_prepare_store_idempotent(tmp_path):
    cfg = make_cfg(tmp_path / "out")
    prepare_store(cfg)
    prepare_store(cfg)
    exp = client_for(tmp_path / "out").get_experiment_by_name("blockprof")
    assert exp is not None
    assert exp.artifact_location == (tmp_path / "out" / "mlartifacts").as_uri()


def test_run_logs_everything(store, tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    df = pd.DataFrame({"arch": ["a", "b"], "mmacs": [1.5, 2.5]})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with track_run(store, run_dir, "profile", tags={"extra": 7}) as tr:
        seen = []
        orig = tr.log_artifact
        # The table must already be complete on disk when it is sent to MLflow.
        tr.log_artifact = lambda p, a=None: (seen.append(Path(p).read_bytes()), orig(p, a))
        for step in range(3):
            tr.log_metrics({"best_acc": 0.1 * step}, step=step)
        tr.log_params({"extra_param": 3})
        tr.set_tags({"phase": "done"})
        table = tr.log_table(df, "tables/pareto.csv")
        png = tr.log_figure(fig, "pareto")
        run_id = tr.run_id
    plt.close(fig)
    assert mlflow.active_run() is None
    assert table == run_dir / "tables" / "pareto.csv" and seen[0] == table.read_bytes()
    assert pd.read_csv(table).equals(df)
    assert png == run_dir / "pareto.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert "hydra" not in OmegaConf.load(run_dir / "config.yaml")

    c = client_for(tmp_path)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert re.fullmatch(r"profile-mbv3-note10-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", run.info.run_name)
    p, t = run.data.params, run.data.tags
    assert p["space.name"] == "mbv3" and p["metric.names"] == "['mmacs']"
    assert p["search.population"] == "8" and p["extra_param"] == "3"
    assert len(p["long"]) == 6000 and not any(k.startswith("hydra") for k in p)
    assert {k: t[k] for k in ("task", "space", "device", "extra", "phase", "run_dir")} == {
        "task": "profile", "space": "mbv3", "device": "note10", "extra": "7", "phase": "done", "run_dir": "runs/r1"}
    # what only the task knows (metrics scored, a search strategy) is the task's to tag
    assert "search" not in t and "metrics" not in t
    assert len(t["git_commit"]) == 40 or t["git_commit"] == "unknown"
    hist = c.get_metric_history(run_id, "best_acc")
    assert [m.step for m in hist] == [0, 1, 2] and hist[-1].value == pytest.approx(0.2)
    arts = {a.path for a in c.list_artifacts(run_id)} | {a.path for a in c.list_artifacts(run_id, "tables")}
    assert {"config.yaml", "pareto.png", "tables/pareto.csv"} <= arts
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_exception_marks_failed_and_propagates(store, tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with track_run(store, tmp_path / "r2", "search") as tr:
            run_id = tr.run_id
            raise ValueError("boom")
    assert client_for(tmp_path).get_run(run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_stale_active_run_is_ended_and_nested_runs(store, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # As left behind by an earlier job in a reused worker (a parent and its child).
    stale = mlflow.start_run().info.run_id
    mlflow.start_run(nested=True)
    with track_run(store, tmp_path / "parent", "sweep") as parent:
        with track_run(store, tmp_path / "child", "train", nested=True) as child:
            pass
    c = client_for(tmp_path)
    assert c.get_run(stale).info.status == "FINISHED"
    assert "mlflow.parentRunId" not in c.get_run(parent.run_id).data.tags
    assert c.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_backend_none_writes_files_only(tmp_path):
    cfg = make_cfg(tmp_path / "out", backend="none")
    prepare_store(cfg)
    with track_run(cfg, tmp_path / "out" / "r", "profile") as tr:
        tr.log_metrics({"a": 1.0})
        path = tr.log_table(pd.DataFrame({"a": [1]}), "t.csv")
        assert tr.run_id is None
    assert path.is_file() and (tmp_path / "out" / "r" / "config.yaml").is_file()
    assert sorted(os.listdir(tmp_path / "out")) == ["r"]  # no mlflow.db, no mlartifacts


def test_unreachable_server_keeps_results(tmp_path, monkeypatch, capsys):
    # Restore the MLflow env knobs the tracker sets for the server backend.
    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(var, "")
    with socket.socket() as s:  # a free port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_cfg(tmp_path, backend="server", uri=f"http://127.0.0.1:{port}",
                   max_retries=0, request_timeout_s=2)
    t0 = time.monotonic()
    prepare_store(cfg)
    with track_run(cfg, tmp_path / "r", "profile") as tr:
        tr.log_metrics({"a": 1.0}, step=0)
        table = tr.log_table(pd.DataFrame({"a": [1]}), "t.csv")
        tr.set_tags({"x": 1})
        assert tr.run_id is None
    assert time.monotonic() - t0 < 15
    assert table.is_file() and (tmp_path / "r" / "config.yaml").is_file()
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("tracking:")]
    assert len(warnings) == 1
    assert "MLflow unavailable" in warnings[0] and str(tmp_path / "r") in warnings[0]


def test_config_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="tracking.backend"):
        track_run(make_cfg(tmp_path, backend="mlfow"), tmp_path / "r", "x").__enter__()
    with pytest.raises(UserError, match="tracking.uri"):
        with track_run(make_cfg(tmp_path, backend="server"), tmp_path / "r", "x"):
            pass
    assert not (tmp_path / "r").exists()


def test_resolve_output_root_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_output_root(OmegaConf.create({"paths": {"output_root": "outputs"}})) == tmp_path / "outputs"


def test_hydra_parallel_sweep(tmp_path):
    """Real Hydra multirun (joblib, 2 workers) on a store that does not exist yet:
    the callback creates it in the parent, and all jobs log to one experiment."""
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        from pathlib import Path
        import hydra
        from hydra.core.hydra_config import HydraConfig
        from blockprof.infra.tracking import track_run

        @hydra.main(config_path=".", config_name="cfg", version_base="1.3")
        def main(cfg):
            with track_run(cfg, Path(HydraConfig.get().runtime.output_dir), "toy") as tr:
                tr.log_metrics({"x": cfg.x})

        main()
    """))
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent("""
        defaults: [override hydra/launcher: joblib, _self_]
        x: 0
        tracking: {backend: local, uri: null, experiment: sweeptest, artifact_root: null}
        space: {name: mbv3}
        device: {name: note10}
        metric: {names: [mmacs]}
        paths: {output_root: out}
        hydra:
          callbacks: {store: {_target_: blockprof.infra.tracking.PrepareStoreCallback}}
          launcher: {n_jobs: 2}
          sweep: {dir: multirun/s1}
    """))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "app.py", "-m", "x=1,2,3,4"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tracking:" not in r.stderr
    c = client_for(tmp_path / "out")
    exp = c.get_experiment_by_name("sweeptest")
    assert exp.artifact_location == (tmp_path / "out" / "mlartifacts").as_uri()
    every = c.search_runs([exp.experiment_id])
    parents = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    runs = [r for r in every if "mlflow.parentRunId" in r.data.tags]
    # one parent run for the sweep (created once although jobs ran in parallel), ended with it
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.run_name.startswith("sweep-") and parent.data.params == {"sweep.x": "1,2,3,4"}
    assert parent.data.tags["mlflow.note.content"].endswith("app.py -m x=1,2,3,4") is False
    assert "x=1,2,3,4" in parent.data.tags["mlflow.note.content"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.data.metrics["x"] for r in runs) == [1, 2, 3, 4]
    assert all(r.info.status == "FINISHED" for r in runs)
    # the sweep's id is relative (the same wherever the store is opened), as are the job folders
    assert {r.data.tags["sweep"] for r in runs} == {"../multirun/s1"} == {parent.data.tags["sweep_parent"]}
    assert sorted(r.data.tags["sweep_job"] for r in runs) == ["0", "1", "2", "3"]
    assert sorted(re.search(r"-#(\d)-", r.info.run_name).group(1) for r in runs) == ["0", "1", "2", "3"]
    assert all(r.data.tags["mlflow.note.content"].startswith("python run.py x=") for r in runs)


def test_rerun_of_unfinished_folder_continues_its_mlflow_run(store, tmp_path):
    """A run killed mid-way leaves its MLflow run RUNNING; the rerun into the same folder
    (a resume) continues that run instead of leaving it RUNNING forever."""
    import json
    run_dir = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        with track_run(store, run_dir, "profile") as tr:
            first = tr.run_id
            tr.log_metrics({"a": 1.0}, step=0)
            raise KeyboardInterrupt
    assert client_for(tmp_path).get_run(first).info.status == "KILLED"
    with track_run(store, run_dir, "profile") as tr:
        tr.log_metrics({"a": 2.0}, step=1)
        assert tr.run_id == first
    run = client_for(tmp_path).get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert [m.value for m in client_for(tmp_path).get_metric_history(first, "a")] == [1.0, 2.0]
    assert json.loads((run_dir / "tracking.json").read_text())["task"] == "profile"
    # a finished folder is not continued: a new run
    with track_run(store, run_dir, "profile") as tr:
        assert tr.run_id != first


def test_failed_run_says_why(store, tmp_path):
    import json
    with pytest.raises(UserError):
        with track_run(store, tmp_path / "r", "search") as tr:
            raise UserError("search.budget must be >= 1")
    run = client_for(tmp_path).get_run(tr.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "search.budget must be >= 1"
    marker = json.loads((tmp_path / "r" / "tracking.json").read_text())
    assert marker["task_error"] == "search.budget must be >= 1" and marker["error"] is None
    assert not (tmp_path / "r" / ".run.lock").exists()


def test_store_lock_serialises_schema_creation(tmp_path):
    """While one process holds the store lock, another cannot open the store."""
    import threading
    from blockprof.infra.tracking import store_lock
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    order = []
    def second():
        with store_lock(uri):
            order.append("second")

    with store_lock(uri):
        t = threading.Thread(target=second)
        # flock is per open file: a second open in this process waits like another process would
        t.start()
        time.sleep(0.5)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]
    assert (tmp_path / "mlflow.db.lock").exists() and not (tmp_path / "mlflow.db").exists()
