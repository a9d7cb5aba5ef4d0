"""Runs started at the same moment: own folders, a store that survives, no shared folder.

Real CLI runs in subprocesses against a fresh SQLite MLflow store (no mocks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from blockprof.common.errors import UserError
from blockprof.infra.tracking import RUN_LOCK, claim_run_dir

from conftest import REPO

TINY = ["task.num_archs=2", "task.all=false", "task.blocks=[[0,0,3,3]]"]


def _launch(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))


def _together(n: int, args: list[str], cwd: Path, timeout: int = 400) -> list[tuple[int, str, str]]:
    procs = [_launch(args, cwd) for _ in range(n)]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


def _runs(root: Path):
    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("blockprof")
    return c.search_runs([exp.experiment_id]) if exp else []


def _folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "runs").rglob("tracking.json"))


@pytest.mark.slow
def test_two_runs_same_moment_default_folders(tmp_path):
    # Needs run folder names unique beyond the second (the app layer's): with names
    # that collide, the folder lock makes the second run refuse (see the next test).
    root = tmp_path / "out"
    res = _together(2, [*TINY, f"paths.output_root={root}"], tmp_path)
    assert [r[0] for r in res] == [0, 0], [r[2][-2000:] for r in res]
    folders = _folders(root)
    assert len(folders) == 2
    runs = _runs(root)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for f in folders:
        assert json.loads((f / "tracking.json").read_text())["tracked"] is True
        assert (f / "samples.csv").is_file() and not (f / RUN_LOCK).exists()
    third = subprocess.run([sys.executable, str(REPO / "run.py"), *TINY, f"paths.output_root={root}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert third.returncode == 0, third.stderr[-2000:]
    assert len(_runs(root)) == 3


@pytest.mark.slow
def test_two_runs_same_folder_never_share(tmp_path):
    """Both aimed at one folder: one runs, the other refuses with one line; the fresh
    store is created once (under its lock) and works for a third run."""
    root, folder = tmp_path / "out", tmp_path / "out" / "runs" / "same"
    res = _together(2, [*TINY, f"paths.output_root={root}", f"hydra.run.dir={folder}"], tmp_path)
    codes = sorted(r[0] for r in res)
    assert codes == [0, 2], [r[2][-2000:] for r in res]
    refused = next(r for r in res if r[0] == 2)
    lines = [ln for ln in refused[2].splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run folder") and "in use by another live run" in lines[0]
    assert "Traceback" not in refused[2]
    marker = json.loads((folder / "tracking.json").read_text())
    assert marker["status"] == "FINISHED" and marker["tracked"] is True
    assert (folder / "samples.csv").is_file() and not (folder / RUN_LOCK).exists()
    runs = _runs(root)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    third = subprocess.run([sys.executable, str(REPO / "run.py"), *TINY, f"paths.output_root={root}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert third.returncode == 0, third.stderr[-2000:]
    assert len(_runs(root)) == 2


_TRACK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from omegaconf import OmegaConf
    from blockprof.infra.tracking import track_run
    root, i = Path(sys.argv[1]), int(sys.argv[2])
    cfg = OmegaConf.create({"tracking": {"backend": "local", "uri": None, "experiment": "race",
                                         "artifact_root": None}, "space": {"name": "mbv3"},
                            "device": {"name": "note10"}, "metric": {"names": ["mmacs"]},
                            "paths": {"output_root": str(root)}})
    with track_run(cfg, root / "runs" / f"r{i}", "toy") as tr:
        tr.log_metrics({"i": float(i)})
    print("tracked" if tr.run_id else "untracked")
""")


@pytest.mark.slow
def test_fresh_store_created_by_many_single_runs(tmp_path):
    """Six single runs (no multirun callback) open one store that does not exist yet."""
    script = tmp_path / "track.py"
    script.write_text(_TRACK)
    root = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(i)], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["tracked"] * 6, [e[-1500:] for _, e in outs]
    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.metrics["i"] for r in runs) == [0, 1, 2, 3, 4, 5]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_claim_refuses_folder_held_by_live_process(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from blockprof.infra.tracking import claim_run_dir
        claim_run_dir({str(folder)!r}, "profile")
        print("held", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by another live run \(pid {holder.pid}\)"):
            claim_run_dir(folder, "profile")
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock went with it, the folder can be resumed
    lock = claim_run_dir(folder, "profile")
    assert (folder / RUN_LOCK).read_text() == str(os.getpid())
    again = claim_run_dir(folder, "profile")  # re-entrant in one process (app, then tracker)
    assert again is lock
    again.release()
    assert (folder / RUN_LOCK).exists()
    lock.release()
    assert not (folder / RUN_LOCK).exists()


def test_claim_refuses_folder_of_another_task(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "tracking.json").write_text(json.dumps({"task": "profile", "status": "FINISHED"}))
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(UserError, match=r"holds a task=profile run; a task=search run needs its own folder"):
        claim_run_dir(folder, "search")
    assert sorted(p.name for p in folder.iterdir()) == before
    claim_run_dir(folder, "profile").release()
