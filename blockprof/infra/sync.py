"""Upload runs whose tracking failed (server down, store broken) to MLflow, later.

    python -m blockprof.sync outputs                     # every run folder under outputs/
    python -m blockprof.sync outputs/multirun/<time>     # one sweep
    python -m blockprof.sync RUN_DIR --uri http://mlflow.example.org:5000   # to another store
    python -m blockprof.sync outputs --dry-run           # list what would be uploaded

Every run folder holds ``tracking.json`` (written by :mod:`blockprof.tracking`): where
the run was meant to go, whether it got there, and a journal of the params, metrics
(with step and time), tags and artifacts it logged, each marked sent or not. sync
replays the rest: into the same MLflow run when it was created before the failure,
else into a new run (with the run's config as params and ``config.yaml``), then marks
the folder as tracked, so a second sync uploads nothing twice.

Runs still marked RUNNING (in progress, or killed) are left alone unless
``--include-running`` (they are then closed as KILLED); ``tracking=none`` runs are
uploaded only to an explicit ``--uri``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write
from blockprof.infra.tracking import MARKER, _get_or_create_experiment, _quiet_store_logs, _reason, \
    flatten_config

BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits


def find_markers(paths: list[str | os.PathLike]) -> list[Path]:
    """``tracking.json`` files of the given run folders, or of every run folder below them."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if p.is_file():
            if p.name != MARKER:
                raise UserError(f"{p} is not a run folder or its {MARKER}")
            found.add(p.resolve())
        else:
            found.update(m.resolve() for m in p.rglob(MARKER))
    return sorted(found)


def pending(marker: dict, uri: str | None, include_running: bool) -> str | None:
    """Why a run needs no upload (None: it does)."""
    if marker.get("tracked"):
        return "already tracked"
    if marker.get("status") == "RUNNING" and not include_running:
        return "status RUNNING (in progress or killed; --include-running uploads it as KILLED)"
    if marker.get("backend") == "none" and not uri:
        return "tracking=none (give --uri to upload it)"
    if not (uri or marker.get("uri")):
        return "no tracking URI recorded (give --uri)"
    return None


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _existing_run(client, run_id: str | None, exp_id: str) -> str | None:
    """``run_id`` if the destination holds it in ``exp_id`` (created before tracking failed)."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return run_id if run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active" else None


def upload(run_dir: Path, marker: dict, uri: str | None = None) -> tuple[str, dict]:
    """Replay one run folder's unsent journal into MLflow; returns (run id, counts)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    dest = uri or marker["uri"]
    art = marker.get("artifact_location") if dest == marker.get("uri") else None
    client = MlflowClient(tracking_uri=dest)
    exp_id = _get_or_create_experiment(client, str(marker.get("experiment") or "blockprof"), art)
    journal = marker.get("journal", {})
    run_id = _existing_run(client, marker.get("run_id"), exp_id)
    # a new run gets everything; the run MLflow already holds gets what did not reach it
    todo = {k: [e for e in journal.get(k, []) if run_id is None or not e[-1]] for k in ("metrics", "artifacts")}
    tags = {**{k: str(v) for k, v in (marker.get("tags") or {}).items()},
            **{k: str(v) for k, v, _ in journal.get("tags", [])},
            "blockprof.synced": time.strftime("%Y-%m-%dT%H:%M:%S"), "blockprof.run_dir": str(run_dir)}
    if run_id is None:
        if marker.get("description"):
            tags.setdefault("mlflow.note.content", str(marker["description"]))
        run_id = client.create_run(exp_id, start_time=marker.get("start_ms"), run_name=marker.get("run_name"),
                                   tags=tags).info.run_id
    cfg_path = run_dir / "config.yaml"
    # the params the run chose to log (what its task used); older folders: their whole config
    params = dict(marker["params"]) if isinstance(marker.get("params"), dict) else (
        flatten_config(OmegaConf.load(cfg_path)) if cfg_path.exists() else {})
    params.update({k: str(v) for k, v, _ in journal.get("params", [])})
    # MLflow refuses to change a param: log the ones it lacks, report those it holds otherwise
    held = client.get_run(run_id).data.params
    conflicts = sorted(k for k, v in params.items() if k in held and held[k] != v)
    new = [Param(k, v) for k, v in params.items() if k not in held]
    for chunk in _batches(new, BATCH["params"]):
        client.log_batch(run_id, params=chunk)
    for chunk in _batches([RunTag(k, v) for k, v in tags.items()], BATCH["tags"]):
        client.log_batch(run_id, tags=chunk)
    metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, step, ts, _ in todo["metrics"]]
    for chunk in _batches(metrics, BATCH["metrics"]):
        client.log_batch(run_id, metrics=chunk)
    missing = []
    files = ([(str(cfg_path), None)] if cfg_path.exists() else []) + [(p, a) for p, a, _ in todo["artifacts"]]
    for path, artifact_path in files:
        local = Path(path) if Path(path).is_absolute() else run_dir / path
        if local.exists():
            client.log_artifact(run_id, str(local), artifact_path=artifact_path)
        else:
            missing.append(str(local))
    status = marker.get("status")
    client.set_terminated(run_id, status=status if status in ("FINISHED", "FAILED", "KILLED") else "KILLED",
                          end_time=marker.get("end_ms") or int(time.time() * 1000))
    return run_id, {"params": len(new), "metrics": len(metrics), "artifacts": len(files) - len(missing),
                    "missing": missing, "conflicts": conflicts}


def mark_synced(marker_path: Path, marker: dict, run_id: str, uri: str) -> None:
    m = dict(marker, tracked=True, run_id=run_id, uri=uri, synced_ms=int(time.time() * 1000),
             offline_error=marker.get("error"), error=None,
             journal={k: [[*e[:-1], True] for e in v] for k, v in marker.get("journal", {}).items()})
    if m.get("status") == "RUNNING":
        m["status"] = "KILLED"
    text = json.dumps(m, indent=1, default=str)
    atomic_write(marker_path, lambda p: Path(p).write_text(text))


def sync(paths: list, uri: str | None = None, dry_run: bool = False, include_running: bool = False,
         out=None) -> dict:
    """Upload every run below ``paths`` that has not reached MLflow. Returns counts by outcome."""
    out = out or sys.stdout
    _quiet_store_logs()
    counts = {"uploaded": 0, "skipped": 0, "failed": 0}
    down: dict[str, str] = {}  # destinations that failed once: skip their other runs
    for marker_path in find_markers(paths):
        run_dir = marker_path.parent
        try:
            marker = json.loads(marker_path.read_text())
        except (OSError, ValueError) as e:
            print(f"failed  {run_dir}: unreadable {MARKER} ({_reason(e)})", file=out)
            counts["failed"] += 1
            continue
        why = pending(marker, uri, include_running)
        if why:
            counts["skipped"] += 1
            if why != "already tracked":
                print(f"skipped {run_dir}: {why}", file=out)
            continue
        dest = uri or marker["uri"]
        if dry_run:
            print(f"would upload {run_dir} -> {dest}", file=out)
            counts["uploaded"] += 1
            continue
        if dest in down:
            print(f"failed  {run_dir}: {dest} unreachable ({down[dest]})", file=out)
            counts["failed"] += 1
            continue
        try:
            run_id, n = upload(run_dir, marker, uri)
        except Exception as e:
            down[dest] = _reason(e)
            print(f"failed  {run_dir}: {down[dest]}", file=out)
            counts["failed"] += 1
            continue
        mark_synced(marker_path, marker, run_id, dest)
        counts["uploaded"] += 1
        lost = f"; missing files, not uploaded: {', '.join(n['missing'])}" if n["missing"] else ""
        if n["conflicts"]:
            lost += f"; MLflow keeps its own value of param(s) {', '.join(n['conflicts'])}"
        print(f"synced  {run_dir} -> {dest} run {run_id} ({n['params']} params, {n['metrics']} metric values, "
              f"{n['artifacts']} files){lost}", file=out)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m blockprof.sync", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="run folders, or folders holding them (outputs/, a sweep folder)")
    ap.add_argument("--uri", help="upload here instead of the tracking URI each run recorded")
    ap.add_argument("--dry-run", action="store_true", help="only list the runs that would be uploaded")
    ap.add_argument("--include-running", action="store_true",
                    help="also upload runs still marked RUNNING (killed runs), closed as KILLED")
    ap.add_argument("--timeout", type=float, default=10, help="seconds per HTTP request to a server (default 10)")
    ap.add_argument("--retries", type=int, default=2, help="HTTP retries per request (default 2)")
    args = ap.parse_args(argv)
    # MLflow's defaults (7 retries x 120 s) would hang for minutes on a dead server
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, args.timeout)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max(0, args.retries))
    try:
        counts = sync(args.paths, uri=args.uri, dry_run=args.dry_run, include_running=args.include_running)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "to upload" if args.dry_run else "uploaded"
    print(f"sync: {counts['uploaded']} {verb}, {counts['skipped']} skipped, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
