"""Runs started at the same moment: a store that survives, no shared folder.

Real processes against a fresh SQLite MLflow store (no mocks). Whole CLI runs racing
(two at once into a fresh output root, two into one folder) are in test_bad_inputs.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from blockprof.common.errors import UserError
from blockprof.infra.tracking import RUN_LOCK, claim_run_dir


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
