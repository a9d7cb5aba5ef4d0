"""The one place where tasks talk to MLflow.

Results are always written to the run's folder first and only then sent to
MLflow, and any MLflow failure (unreachable server, broken store) turns
tracking off for the rest of the run with one warning line: tracking never
kills a task and never loses a result.

``backend``: ``local`` (SQLite store + artifacts under ``paths.output_root``),
``server`` (``tracking.uri`` or ``$MLFLOW_TRACKING_URI``) or ``none``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write

BACKENDS = ("local", "none", "server")
MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
# Written to every run folder: whether the run reached MLflow, and a journal of what was
# logged, so `python -m blockprof.sync <folder>` can upload a run whose tracking failed.
MARKER = "tracking.json"
# Held (flock) by the live run that owns a run folder; removed when that run ends.
RUN_LOCK = ".run.lock"


# ---------------------------------------------------------------- config helpers
def _hydra_cfg(cfg: DictConfig | None = None):
    """The ``hydra`` node: from ``cfg`` itself (callbacks get the full config) or
    the HydraConfig singleton (inside a job); None outside Hydra."""
    if cfg is not None and "hydra" in cfg:
        return cfg.hydra
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:
        return None


def resolve_path(path: str | os.PathLike, cfg: DictConfig | None = None) -> Path:
    """Absolute path; relative ones are taken from the launch directory (Hydra may
    have changed the working directory to the job's folder)."""
    p = Path(str(path)).expanduser()
    if p.is_absolute():
        return p
    hc = _hydra_cfg(cfg)
    base = hc.runtime.cwd if hc is not None and hc.runtime.get("cwd") else os.getcwd()
    return (Path(base) / p).resolve()


def resolve_output_root(cfg: DictConfig) -> Path:
    """``cfg.paths.output_root`` as an absolute path."""
    return resolve_path(cfg.paths.output_root, cfg)


def _backend(cfg: DictConfig) -> str:
    backend = str(cfg.tracking.get("backend", "local"))
    if backend not in BACKENDS:
        raise UserError(f"tracking.backend={backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def _store(cfg: DictConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment) for a tracking backend."""
    t = cfg.tracking
    if _backend(cfg) == "server":
        uri = t.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise UserError("tracking.backend=server needs tracking.uri or $MLFLOW_TRACKING_URI")
        if not str(uri).startswith(("http://", "https://")):
            raise UserError(f"tracking.uri {uri!r} is not a tracking server address (http://host:port); "
                            "for a local store use tracking=local")
        return str(uri), (str(t.artifact_root) if t.get("artifact_root") else None)
    root = resolve_output_root(cfg)
    uri = str(t.uri) if t.get("uri") else f"sqlite:///{root / 'mlflow.db'}"
    # Explicit and absolute: MLflow would otherwise fix it relative to the cwd of
    # whichever process created the experiment.
    art = resolve_path(t.artifact_root, cfg) if t.get("artifact_root") else root / "mlartifacts"
    return uri, art.as_uri()


def _get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created meanwhile by a parallel job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _reason(e: BaseException) -> str:
    """One short line; keeps the tail, where HTTP errors put the root cause."""
    msg = f"{type(e).__name__}: " + " ".join(str(e).split())
    return msg if len(msg) <= 240 else f"{msg[:100]} ... {msg[-130:]}"


# ---------------------------------------------------------------- store setup
def _sqlite_file(uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri or not str(uri).startswith("sqlite:///"):
        return None
    return Path(str(uri)[len("sqlite:///"):].split("?", 1)[0])


@contextlib.contextmanager
def store_lock(uri: str | None):
    """Exclusive lock beside a SQLite store while it is created or migrated.

    MLflow builds the schema when a client first opens the file; two processes doing
    that at once break the store for good (alembic migration races), so every process
    opens a new client under this lock. Other URIs: no lock needed."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks: schema creation takes about a second
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _open_client(uri: str):
    """An MlflowClient whose store exists with the current schema (created under the lock)."""
    from mlflow.tracking import MlflowClient

    db = _sqlite_file(uri)
    if db is not None and db.exists():  # MLflow would retry a broken file for minutes
        ok = db.is_file()
        if ok and db.stat().st_size:
            with open(db, "rb") as f:
                ok = f.read(16) == b"SQLite format 3\x00"
        if not ok:
            raise RuntimeError(f"{db} is not an SQLite database; move it away to start a new store")
    with store_lock(uri):
        return MlflowClient(tracking_uri=uri)


def _quiet_store_logs() -> None:
    """MLflow logs its schema creation at INFO on stderr; keep user output clean."""
    import logging

    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def prepare_store(cfg: DictConfig) -> None:
    """Create the local SQLite schema and the experiment once, in the parent.

    A fresh SQLite store created by several parallel jobs at once is corrupted
    for good (schema-migration races), so this runs before any job starts.
    Idempotent. Server and none backends: nothing to do.
    """
    if _backend(cfg) != "local":
        return
    root = resolve_output_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    uri, art = _store(cfg)
    _quiet_store_logs()
    try:
        # Creating the client builds (or migrates) the schema.
        _get_or_create_experiment(_open_client(uri), str(cfg.tracking.experiment), art)
    except Exception as e:
        print(f"tracking: could not prepare MLflow store {uri} ({_reason(e)})", file=sys.stderr)


class PrepareStoreCallback(Callback):
    """Hydra callback (``hydra.callbacks``): prepare the store before jobs start."""

    def _prepare(self, config: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        # ${hydra:...} interpolations in paths need the singleton, which Hydra only
        # sets later, in each job. Same pattern as Hydra's own --cfg handling.
        if not HydraConfig.initialized() and "hydra" in config:
            HydraConfig.instance().set_config(config)
            OmegaConf.set_readonly(config.hydra, None)  # set_config froze it; undo
        prepare_store(config)

    # A single run creates its store itself (under the store lock, so runs started at
    # the same moment are safe), after the config is validated: a user error must leave
    # nothing behind. Parallel jobs get it done once, up front.
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)


# ---------------------------------------------------------------- small helpers
@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the repository holding this file, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except Exception:
        return "unknown"


def flatten_config(cfg: DictConfig, groups: tuple[str, ...] | None = None) -> dict[str, str]:
    """Resolved config (without ``hydra``) as {"a.b.c": str(value)} for MLflow params;
    with ``groups``, only those groups, ``task`` and ``seed`` (what the task reads)."""
    container = _container(cfg)
    if groups is not None:
        keep = {*groups, "task", "seed"}
        container = {k: v for k, v in container.items() if k in keep}
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = str(node)[:MAX_PARAM_LEN]

    walk(container, "")
    return flat


def _container(cfg: DictConfig) -> dict:
    try:
        c = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. an interpolation that only resolves inside Hydra
        c = OmegaConf.to_container(cfg, resolve=False)
    c.pop("hydra", None)
    return c


def _sweep_tags() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return {}
        return {"sweep": str(resolve_path(hc.sweep.dir)), "sweep_job": str(hc.job.num),
                "overrides": ",".join(hc.overrides.task)[:MAX_PARAM_LEN]}
    except Exception:  # HydraConfig unset (tests, plain scripts)
        return {}


# ---------------------------------------------------------------- run folder ownership
class RunDirLock:
    """A live run's hold on its folder: an flock on ``<run_dir>/.run.lock`` (released by
    the OS when the process dies, so a killed run's folder can be resumed)."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self.fd, self.depth = run_dir, fd, 1

    @property
    def path(self) -> Path:
        return self.run_dir / RUN_LOCK

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0 or self.fd < 0:
            return
        _HELD.pop(self.run_dir, None)
        try:
            os.unlink(self.path)  # while still locked: a waiting run then sees a fresh file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


_HELD: dict[Path, RunDirLock] = {}  # folders this process holds (the app may claim before the tracker)


def _marker_task(run_dir: Path) -> str | None:
    """The task recorded in a folder's ``tracking.json``, if any."""
    try:
        m = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return None
    return m.get("task") or (m.get("tags") or {}).get("task")


def claim_run_dir(run_dir: str | os.PathLike, task: str) -> RunDirLock:
    """Take ``run_dir`` for a live ``task`` run, or raise UserError: when another live
    run holds it, or it holds a run of another task. Call ``release()`` when done.
    Re-entrant within one process (the app and the tracker may both claim)."""
    run_dir = Path(run_dir).resolve()
    held = _HELD.get(run_dir)
    if held is not None:
        held.depth += 1
        return held
    other = _marker_task(run_dir)
    if other is not None and other != task:
        raise UserError(f"{run_dir} holds a task={other} run; a task={task} run needs its own folder "
                        "(leave hydra.run.dir at its default or pick an empty folder)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir} ({e.strerror or e}); "
                        "set paths.output_root to a writable folder") from None
    path = run_dir / RUN_LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"cannot write in run folder {run_dir} ({e.strerror or e}); "
                            "set paths.output_root to a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                owner = path.read_text().strip() or "?"
            except OSError:
                owner = "?"
            raise UserError(f"run folder {run_dir} is in use by another live run (pid {owner}); "
                            "wait for it to end or use another folder") from None
        try:  # the holder may have removed the file between our open and flock: retry on the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    lock = _HELD[run_dir] = RunDirLock(run_dir, fd)
    return lock


def _previous_run(run_dir: Path, uri: str | None, experiment: str, task: str) -> str | None:
    """The MLflow run id an unfinished earlier run of this folder left (to continue it)."""
    try:
        m = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("status") == "FINISHED" or not m.get("run_id"):
        return None
    if m.get("uri") != uri or m.get("experiment") != experiment or _marker_task(run_dir) != task:
        return None
    return str(m["run_id"])


# ---------------------------------------------------------------- the run
class RunTracker:
    """One MLflow run scoped to a ``with`` block; see :func:`track_run`."""

    def __init__(self, cfg: DictConfig, run_dir: Path, task: str,
                 tags: dict | None = None, nested: bool = False, groups: tuple[str, ...] | None = None):
        self.cfg, self.run_dir, self.task, self.groups = cfg, Path(run_dir), task, groups
        self.extra_tags, self.nested = dict(tags or {}), nested
        self.enabled = _backend(cfg) != "none"
        self._run_id: str | None = None
        self._mlflow = None
        self._lock: RunDirLock | None = None
        self._marker: dict = {"journal": {"params": [], "metrics": [], "tags": [], "artifacts": []}}

    @property
    def run_id(self) -> str | None:
        return self._run_id if self.enabled else None

    # -- MLflow calls go through here: a failure disables tracking, never the task
    def _call(self, fn, *args, **kwargs) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(self._mlflow, *args, **kwargs)
        except Exception as e:
            self._disable(e)
            return None

    def _disable(self, e: BaseException) -> None:
        self.enabled = False
        self._marker["error"] = _reason(e)
        self._write_marker("RUNNING")
        print(f"tracking: MLflow unavailable ({_reason(e)}); results kept in {self.run_dir} "
              f"(upload later: python -m blockprof.sync {self.run_dir})", file=sys.stderr, flush=True)
        try:  # best effort: don't leave our run active in this (possibly reused) process
            active = self._mlflow.active_run() if self._run_id else None
            if active is not None and active.info.run_id == self._run_id:
                self._mlflow.end_run(status="FAILED")  # pops the run before contacting the store
        except Exception:
            pass

    def _tags(self) -> dict[str, str]:
        c = self.cfg
        tags = {
            "task": self.task,
            "space": str(OmegaConf.select(c, "space.name", default="")),
            "device": str(OmegaConf.select(c, "device.name", default="")),
            "metrics": ",".join(map(str, OmegaConf.select(c, "metric.names", default=[]) or [])),
            "git_commit": git_commit(),
        }
        search = OmegaConf.select(c, "search.name", default=None)
        if search is not None:
            tags["search"] = str(search)
        tags.update(_sweep_tags())
        tags.update({k: str(v) for k, v in self.extra_tags.items()})
        return tags

    def __enter__(self) -> RunTracker:
        # Config errors raise before anything is written: they are the user's to fix.
        uri, art = _store(self.cfg) if self.enabled else (None, None)
        _quiet_store_logs()
        t = self.cfg.tracking
        # Before anything is written: refuse a folder another live run or another task holds.
        self._lock = claim_run_dir(self.run_dir, self.task)
        resume_id = _previous_run(self.run_dir, uri, str(t.experiment), self.task) if self.enabled else None
        try:
            cfg_yaml = OmegaConf.to_yaml(OmegaConf.create(_container(self.cfg)))
            cfg_path = atomic_write(self.run_dir / "config.yaml", lambda p: Path(p).write_text(cfg_yaml))
        except OSError as e:
            self._release()
            raise UserError(f"cannot write in run folder {self.run_dir} ({e.strerror or e}); "
                            "set paths.output_root to a writable folder") from None
        self._marker.update(backend=_backend(self.cfg), uri=uri, artifact_location=art, experiment=str(t.experiment),
                            task=self.task, run_name=f"{self.task}-{self.run_dir.name}",
                            start_ms=int(time.time() * 1000), tags=self._tags(), error=None)
        if not self.enabled:
            self._write_marker("RUNNING")
            return self
        if _backend(self.cfg) == "server":  # MLflow defaults: 7 retries x 120 s (minutes per call)
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(t.get("request_timeout_s", 5))
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(t.get("max_retries", 1))
        else:  # local: the store lives under output_root
            resolve_output_root(self.cfg).mkdir(parents=True, exist_ok=True)

        def start(mlflow):
            mlflow.set_tracking_uri(uri)
            # joblib reuses worker processes: a run left active by an earlier job
            # must not become our parent or swallow our metrics.
            while mlflow.active_run() is not None and not self.nested:
                mlflow.end_run()
            client = _open_client(uri)
            exp_id = _get_or_create_experiment(client, str(t.experiment), art)
            run = None
            if resume_id is not None:  # a killed or failed run of this folder: continue its MLflow run
                try:
                    if client.get_run(resume_id).info.experiment_id == exp_id:
                        run = mlflow.start_run(run_id=resume_id, nested=self.nested)
                        mlflow.set_tags({"resumed": "true"})
                except Exception:  # deleted meanwhile, another store: start a new one
                    run = None
            if run is None:
                run = mlflow.start_run(experiment_id=exp_id, run_name=f"{self.task}-{self.run_dir.name}",
                                       nested=self.nested, tags=self._tags())
            self._run_id = run.info.run_id
            mlflow.log_params(flatten_config(self.cfg, self.groups))
            mlflow.log_artifact(str(cfg_path))

        try:
            import mlflow

            self._mlflow = mlflow
        except Exception as e:
            self._disable(e)
            return self
        self._call(start)
        self._write_marker("RUNNING")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = "FINISHED" if exc_type is None else (
            "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        if exc is not None:  # the run says why it ended, in MLflow and in the marker
            why = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
            self._marker["task_error"] = why
            if self.enabled and self._run_id is not None:
                self._call(lambda m: m.set_tag("error", why))
        if self.enabled and self._run_id is not None:
            self._call(lambda m: m.end_run(status=status))
        self._write_marker(status)
        self._release()
        return False  # never swallow the task's exception

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _record(self, kind: str, entries: list, fn) -> None:
        """Send one logging call and journal its entries with whether they reached MLflow."""
        was = self.enabled
        self._call(fn)
        self._marker["journal"][kind].extend([*e, was and self.enabled] for e in entries)
        if not self.enabled and self._marker.get("backend") != "none":
            self._write_marker("RUNNING")  # offline: keep the journal current on disk

    def _write_marker(self, status: str) -> None:
        """``tracking.json``: tracked (everything reached MLflow), where to, and the journal."""
        try:
            m = dict(self._marker, status=status, run_id=self._run_id,
                     tracked=bool(self.enabled and self._run_id and status != "RUNNING"))
            if status != "RUNNING":
                m["end_ms"] = int(time.time() * 1000)
            text = json.dumps(m, indent=1, default=str)
            atomic_write(self.run_dir / MARKER, lambda p: Path(p).write_text(text))
        except Exception as e:  # the marker is a convenience: never fail the task for it
            print(f"tracking: could not write {self.run_dir / MARKER} ({_reason(e)})", file=sys.stderr)

    # -- logging API
    def call_mlflow(self, fn) -> Any:
        """Run ``fn(mlflow)`` under the tracker's guard (e.g. logging a model): a failure
        turns tracking off with one line, never fails the task."""
        return self._call(fn)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        values, ts = {k: float(v) for k, v in metrics.items()}, int(time.time() * 1000)
        self._record("metrics", [(k, v, step or 0, ts) for k, v in values.items()],
                     lambda m: m.log_metrics(values, step=step))

    def log_params(self, params: dict[str, Any]) -> None:
        values = {k: str(v)[:MAX_PARAM_LEN] for k, v in params.items()}
        self._record("params", list(values.items()), lambda m: m.log_params(values))

    def set_tags(self, tags: dict[str, Any]) -> None:
        values = {k: str(v) for k, v in tags.items()}
        self._record("tags", list(values.items()), lambda m: m.set_tags(values))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        p, here = Path(path).resolve(), self.run_dir.resolve()  # relative inside the run folder: movable
        self._record("artifacts", [(str(p.relative_to(here) if p.is_relative_to(here) else p), artifact_path)],
                     lambda m: m.log_artifact(str(path), artifact_path=artifact_path))

    def log_table(self, df, name: str) -> Path:
        """Write ``df`` as CSV to ``run_dir/name`` (atomically, without the index:
        ``reset_index()`` first if it matters), then log it."""
        path = atomic_write(self.run_dir / name, lambda p: df.to_csv(p, index=False))
        self.log_artifact(path, _artifact_dir(name))
        return path

    def log_figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as PNG to ``run_dir/name``, then log it."""
        if not name.lower().endswith(".png"):
            name += ".png"
        path = atomic_write(self.run_dir / name, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
        self.log_artifact(path, _artifact_dir(name))
        return path


def _artifact_dir(name: str) -> str | None:
    parent = Path(name).parent.as_posix()
    return None if parent == "." else parent


def track_run(cfg: DictConfig, run_dir: Path, task: str, tags: dict | None = None,
              nested: bool = False, groups: tuple[str, ...] | None = None) -> RunTracker:
    """``with track_run(cfg, run_dir, "profile") as tr: tr.log_metrics(...)``; ``groups``:
    the config groups the task reads (only those are logged as params)."""
    return RunTracker(cfg, run_dir, task, tags=tags, nested=nested, groups=groups)


def fetch_run_csv(cfg: DictConfig, run_id: str, name: str):
    """A CSV artifact (first match of `name` anywhere among the run's artifacts) of an MLflow
    run in this config's store, as (DataFrame, where it came from); one-line errors."""
    import tempfile

    import pandas as pd
    uri, _ = _store(cfg)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        # looking a run up must not create an empty store
        raise UserError(f"no MLflow run {run_id}: there is no store at {uri} yet")
    try:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=uri)
        client.get_run(run_id)
        paths, todo = [], [None]
        while todo:
            for f in client.list_artifacts(run_id, todo.pop()):
                (todo.append(f.path) if f.is_dir else paths.append(f.path))
        hits = sorted((p for p in paths if p.split("/")[-1] == name), key=lambda p: (p.count("/"), p))
        if not hits:
            raise UserError(f"MLflow run {run_id} has no {name} artifact (is it a task=profile run?)")
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, hits[0], tmp)
            df = pd.read_csv(local)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot fetch {name} of MLflow run {run_id} from {uri}: {' '.join(str(exc).split())[:200]}") from None
    return df, f"mlflow run {run_id}"
