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
import logging
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

log = logging.getLogger(__name__)
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


SWEEP_COMMAND_ENV = "BLOCKPROF_SWEEP_COMMAND"  # the sweep's command line, for the parent run its jobs open
SWEEP_INFO_ENV = "BLOCKPROF_SWEEP_INFO"  # the sweeper's kind and the swept values (JSON), for the same


class PrepareStoreCallback(Callback):
    """Hydra callback (``hydra.callbacks``): prepare the store before a sweep's jobs start,
    hold the sweep folder while it runs (a killed sweep's parent run is then found dead) and
    end the parent runs its jobs opened when it is over."""

    def __init__(self) -> None:
        self._sweep_lock: RunDirLock | None = None
        self._sweep_dir: Path | None = None

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
        import shlex

        self._prepare(config)
        # jobs may run in other processes (joblib, submitit): they inherit the environment
        prog = "python run.py" if sys.argv[0].endswith(".py") else "blockprof"
        os.environ[SWEEP_COMMAND_ENV] = " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])])
        try:
            os.environ[SWEEP_INFO_ENV] = json.dumps(_sweeper_info(config.hydra), default=str)
        except Exception:
            os.environ.pop(SWEEP_INFO_ENV, None)
        if _backend(config) == "none" or "hydra" not in config:
            return
        try:
            self._sweep_dir = resolve_path(config.hydra.sweep.dir, config)
            self._sweep_lock = claim_run_dir(self._sweep_dir, "sweep")
        except Exception:  # holding the folder only helps find a killed sweep: never stop one for it
            self._sweep_lock = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(SWEEP_COMMAND_ENV, None)
        os.environ.pop(SWEEP_INFO_ENV, None)
        if self._sweep_dir is None:
            return
        try:
            end_sweep_parents(self._sweep_dir, "FINISHED")
        except Exception as e:
            print(f"tracking: could not end the sweep's parent run ({_reason(e)})", file=sys.stderr)
        if self._sweep_lock is not None:
            self._sweep_lock.release()
            self._sweep_lock = None
        try:
            self._sweep_dir.rmdir()  # only when every job left nothing (all refused)
        except OSError:
            pass


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
    """Resolved config (without ``hydra`` and ``_target_`` class paths) as
    {"a.b.c": str(value)} for MLflow params; with ``groups``, only those groups, ``task``
    and ``seed``."""
    container = _container(cfg)
    if groups is not None:
        keep = {*groups, "task", "seed"}
        container = {k: v for k, v in container.items() if k in keep}
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                if k == "_target_":  # a class path says nothing a user chose; the group's name does
                    continue
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


def relative_to_root(path: str | os.PathLike, cfg: DictConfig) -> str:
    """``path`` relative to ``paths.output_root``, as tags name folders: the same on every
    machine that shares a store."""
    # `..` when the folder lies beside the output root (hydra.sweep.dir elsewhere): still the
    # same id wherever the tree is mounted, and what compare computes from the store's folder
    return Path(os.path.relpath(resolve_path(path, cfg), resolve_output_root(cfg))).as_posix()


def experiment_name(cfg: DictConfig, task: str) -> str:
    """``<tracking.experiment>/<task>``: one MLflow experiment per task, so each task's runs
    table has the columns of that task (``tracking.experiment_per_task=false``: one)."""
    base = str(cfg.tracking.experiment)
    return f"{base}/{task}" if cfg.tracking.get("experiment_per_task", False) else base


def experiment_names(client, base: str) -> list:
    """The experiments a blockprof store holds under the base name ``base``: ``base`` itself
    and every ``base/<task>``."""
    found = client.search_experiments(filter_string=f"name LIKE '{base.replace(chr(39), '')}/%'")
    exact = client.get_experiment_by_name(base)
    return ([exact] if exact is not None else []) + [e for e in found if e.name != base]


def _stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(ms / 1000))


def run_name(cfg: DictConfig, task: str, start_ms: int) -> str:
    """``<task>-<space>-<device>-<time>``; a sweep's job ``<task>-<space>-<device>-#<job>-<time>``
    (its jobs start together: the job number tells them apart). What tells runs apart comes
    first, where the UI's name column does not cut it."""
    space = OmegaConf.select(cfg, "space.name", default=None) or "-"
    device = OmegaConf.select(cfg, "device.name", default=None) or "-"
    job = _sweep_tags(cfg).get("sweep_job")
    return f"{task}-{space}-{device}-{'' if job is None else f'#{job}-'}{_stamp(start_ms)}"


def command_line(cfg: DictConfig | None = None) -> str:
    """The command that reruns this run: the program and the run's own overrides (a sweep's
    job: its values, so the line reruns that one job)."""
    import shlex

    hc = _hydra_cfg(cfg)
    if hc is None or OmegaConf.select(hc, "overrides.task", default=None) is None:
        return "blockprof.run(cfg) (Python API)"
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    prog = "blockprof" if prog == "blockprof" else "python run.py"
    return " ".join([prog, *(shlex.quote(o) for o in hc.overrides.task)])


def _in_multirun(hc) -> bool:
    try:
        from hydra.types import RunMode

        return hc.mode == RunMode.MULTIRUN
    except Exception:
        return False


def _sweep_tags(cfg: DictConfig | None = None) -> dict[str, str]:
    """A sweep job's tags: its sweep folder relative to the output root (the same id on every
    machine), its job number and overrides; nothing for a single run."""
    try:
        hc = _hydra_cfg(cfg)
        if hc is None or not _in_multirun(hc):
            return {}
        root_cfg = cfg if cfg is not None and "paths" in cfg else None
        sweep = relative_to_root(hc.sweep.dir, root_cfg) if root_cfg is not None else str(hc.sweep.dir)
        return {"sweep": sweep, "sweep_job": str(hc.job.num),
                "overrides": ",".join(hc.overrides.task)[:MAX_PARAM_LEN]}
    except Exception:  # HydraConfig unset (tests, plain scripts)
        return {}


# ---------------------------------------------------------------- MLflow's own output
def file_logger(name: str = "blockprof.mlflow") -> "logging.Logger":
    """``blockprof.mlflow``: MLflow's messages and warnings go to the run's log file
    (run.log) only. They are MLflow's bookkeeping ("Successfully registered model",
    type-hint warnings), not results, so the console stays for blockprof's own lines."""
    import logging

    lg = logging.getLogger(name)
    lg.propagate = False
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    lg.handlers = files or [logging.NullHandler()]
    lg.setLevel(logging.INFO)
    return lg


class _LineLog:
    """A text stream that turns each written line into a log record."""

    def __init__(self, logger, level: int):
        self.logger, self.level, self.buf = logger, level, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self.buf.strip():
            self.logger.log(self.level, self.buf.rstrip())
        self.buf = ""


@contextlib.contextmanager
def mlflow_output_to_log():
    """While MLflow runs: its prints (``eprint``), its ``mlflow`` logger and Python warnings
    raised inside it go to run.log instead of the console."""
    import logging
    import warnings

    lg = file_logger()
    mlf = logging.getLogger("mlflow")
    saved = (mlf.handlers, mlf.propagate)
    mlf.handlers, mlf.propagate = lg.handlers, False
    out, err = _LineLog(lg, logging.INFO), _LineLog(lg, logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("default")
            yield
    finally:
        out.flush()
        err.flush()
        mlf.handlers, mlf.propagate = saved
        for w in caught:
            lg.warning("%s: %s (%s:%s)", w.category.__name__, w.message, Path(w.filename).name, w.lineno)


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


# ---------------------------------------------------------------- sweeps' parent runs and dead runs
PARENTS = ".mlflow_parents.json"  # in a sweep folder: the command line and the parent run per experiment


def lock_held(path: Path) -> bool | None:
    """Whether a live process holds the flock on ``path``; None when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def _parents_file(sweep_dir: Path):
    """The sweep's parents record, read and rewritten under an exclusive lock (parallel jobs)."""
    path = sweep_dir / PARENTS
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(path) as f:
            text = f.read()
        try:
            rec = json.loads(text) if text.strip() else {}
        except ValueError:
            rec = {}
        before = json.dumps(rec, sort_keys=True)
        yield rec
        if json.dumps(rec, sort_keys=True) != before:
            atomic_write(path, lambda p: Path(p).write_text(json.dumps(rec, indent=1)))
    finally:
        os.close(fd)


def _sweeper_info(hc) -> dict:
    """(kind, parent name prefix, params) of the sweep's sweeper."""
    sw = hc.sweeper
    target = str(sw.get("_target_", ""))
    if "optuna" in target.lower():
        params = {f"sweeper.params.{k}": str(v) for k, v in (sw.get("params") or {}).items()}
        params.update({f"sweeper.{k}": sw.get(k) for k in ("direction", "n_trials", "n_jobs", "study_name")
                       if sw.get(k) is not None})
        return {"kind": "optuna", "name": f"study-{sw.get('study_name') or 'optuna'}", "params": params}
    params = {f"sweep.{o.split('=', 1)[0]}": o.split("=", 1)[1] for o in hc.overrides.task
              if "=" in o and "," in o.split("=", 1)[1]}
    return {"kind": "basic", "name": "sweep", "params": params}


def sweep_parent(cfg: DictConfig, client, exp_id: str) -> str | None:
    """The parent run of this sweep job's sweep in experiment ``exp_id`` (created by the first
    job that needs it): one parent per Hydra sweep or Optuna study, its jobs nested under it.
    None outside a sweep."""
    hc = _hydra_cfg(cfg)
    if hc is None or not _in_multirun(hc) or "paths" not in cfg:
        return None
    sweep_dir = resolve_path(hc.sweep.dir, cfg)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _parents_file(sweep_dir) as rec:
        parents = rec.setdefault("parents", {})
        if exp_id in parents:
            return parents[exp_id]
        try:  # what the sweep's parent process saw: the sweep's own overrides, not this job's
            info = json.loads(os.environ[SWEEP_INFO_ENV])
        except (KeyError, ValueError):
            info = _sweeper_info(hc)
        start_ms = int(rec.get("start_ms") or time.time() * 1000)
        task = str(OmegaConf.select(cfg, "task.name", default="run"))
        space, device = OmegaConf.select(cfg, "space.name", default="-"), OmegaConf.select(cfg, "device.name", default="-")
        tags = {"task": task, "space": str(space), "device": str(device), "git_commit": git_commit(),
                # not `sweep`: filtering the runs table by a sweep lists its jobs flat, and
                # compare's tables hold the jobs' results only
                "sweep_parent": relative_to_root(sweep_dir, cfg), "sweep_kind": info["kind"],
                "run_dir": relative_to_root(sweep_dir, cfg),
                "mlflow.note.content": os.environ.get(SWEEP_COMMAND_ENV) or "python run.py -m ..."}
        with mlflow_output_to_log():
            run = client.create_run(exp_id, start_time=start_ms, tags=tags,
                                    run_name=f"{info['name']}-{task}-{space}-{device}-{_stamp(start_ms)}")
            if info["params"]:
                from mlflow.entities import Param

                client.log_batch(run.info.run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN])
                                                          for k, v in info["params"].items()])
        parents[exp_id] = run.info.run_id
        rec.setdefault("uri", _store(cfg)[0])
        return run.info.run_id


def end_sweep_parents(sweep_dir: Path, status: str = "FINISHED") -> None:
    """End the parent runs a sweep's jobs opened, attaching Optuna's result file if any."""
    from mlflow.tracking import MlflowClient

    if not (sweep_dir / PARENTS).is_file():
        return
    with _parents_file(sweep_dir) as rec:
        if not rec.get("parents") or not rec.get("uri"):
            return
        with mlflow_output_to_log():
            client = MlflowClient(tracking_uri=rec["uri"])
            for run_id in rec["parents"].values():
                result = sweep_dir / "optimization_results.yaml"
                if result.is_file():  # the study's best value and knobs
                    client.log_artifact(run_id, str(result))
                    try:
                        best = OmegaConf.load(result).get("best_value")
                        if best is not None:
                            client.log_metric(run_id, "best_value", float(best))
                    except Exception:
                        pass
                client.set_terminated(run_id, status=status)
        rec["ended"] = status


def mark_dead_runs_killed(client, exp_id: str, cfg: DictConfig, keep: str | None = None) -> list[str]:
    """Runs of ``exp_id`` still RUNNING whose process is gone - their folder's run lock is
    left and no one holds it (a killed run or sweep) - become KILLED. Folders not on this
    machine are left alone: only a lock we can see says a run is dead."""
    dead = []
    if "paths" not in cfg:
        return dead
    for run in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=200):
        folder = run.data.tags.get("run_dir")
        if run.info.run_id == keep or not folder:
            continue
        path = Path(folder) if Path(folder).is_absolute() else resolve_output_root(cfg) / folder
        if lock_held(path / RUN_LOCK) is False:
            client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, "killed", f"its process ended without closing it; found by run {keep}")
            dead.append(run.info.run_id)
    if dead:
        log.info("marked %d MLflow run(s) KILLED whose process had died: %s", len(dead), ", ".join(dead))
    return dead


# ---------------------------------------------------------------- the run
class RunTracker:
    """One MLflow run scoped to a ``with`` block; see :func:`track_run`."""

    def __init__(self, cfg: DictConfig, run_dir: Path, task: str,
                 tags: dict | None = None, nested: bool = False, groups: tuple[str, ...] | None = None,
                 params: dict | None = None, description: str | None = None):
        self.cfg, self.run_dir, self.task, self.groups = cfg, Path(run_dir), task, groups
        self.description = description
        self.extra_tags, self.nested, self.params = dict(tags or {}), nested, params
        self.enabled = _backend(cfg) != "none"
        self._run_id: str | None = None
        self._exp_id: str | None = None
        self.uri: str | None = None
        self._mlflow = None
        self._lock: RunDirLock | None = None
        self._marker: dict = {"journal": {"params": [], "metrics": [], "tags": [], "artifacts": []}}

    @property
    def run_id(self) -> str | None:
        return self._run_id if self.enabled else None

    @property
    def url(self) -> str | None:
        """Where the run's page is: the server's address, or the page ``mlflow ui`` serves
        for a local store (at its default address)."""
        if not self.run_id or self._exp_id is None:
            return None
        base = self.uri if str(self.uri).startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return f"{base.rstrip('/')}/#/experiments/{self._exp_id}/runs/{self._run_id}"

    # -- MLflow calls go through here: a failure disables tracking, never the task
    def _call(self, fn, *args, **kwargs) -> Any:
        if not self.enabled:
            return None
        try:
            with mlflow_output_to_log():
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
        """What was true for this run: task, space, device, commit, the run folder; the
        caller adds what only it knows (the metrics it scores, the search strategy)."""
        c = self.cfg
        tags = {
            "task": self.task,
            "space": str(OmegaConf.select(c, "space.name", default="")),
            "device": str(OmegaConf.select(c, "device.name", default="")),
            "git_commit": git_commit(),
            "run_dir": relative_to_root(self.run_dir, c) if "paths" in c else str(self.run_dir),
        }
        tags.update(_sweep_tags(c))
        tags.update({k: str(v) for k, v in self.extra_tags.items()})
        return tags

    def _params(self) -> dict[str, str]:
        raw = self.params if self.params is not None else flatten_config(self.cfg, self.groups)
        return {k: str(v)[:MAX_PARAM_LEN] for k, v in raw.items()}

    def __enter__(self) -> RunTracker:
        # Config errors raise before anything is written: they are the user's to fix.
        uri, art = _store(self.cfg) if self.enabled else (None, None)
        self.uri = uri
        _quiet_store_logs()
        experiment = experiment_name(self.cfg, self.task)
        # Before anything is written: refuse a folder another live run or another task holds.
        self._lock = claim_run_dir(self.run_dir, self.task)
        resume_id = _previous_run(self.run_dir, uri, experiment, self.task) if self.enabled else None
        try:
            cfg_yaml = OmegaConf.to_yaml(OmegaConf.create(_container(self.cfg)))
            cfg_path = atomic_write(self.run_dir / "config.yaml", lambda p: Path(p).write_text(cfg_yaml))
        except OSError as e:
            self._release()
            raise UserError(f"cannot write in run folder {self.run_dir} ({e.strerror or e}); "
                            "set paths.output_root to a writable folder") from None
        start_ms = int(time.time() * 1000)
        params = self._params()
        self._marker.update(backend=_backend(self.cfg), uri=uri, artifact_location=art, experiment=experiment,
                            task=self.task, run_name=run_name(self.cfg, self.task, start_ms),
                            description=self.description or command_line(self.cfg), start_ms=start_ms, tags=self._tags(),
                            params=params, error=None)
        if not self.enabled:
            self._write_marker("RUNNING")
            return self
        t = self.cfg.tracking
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
            active = mlflow.active_run() if self.nested else None
            # a nested run lives in its parent's experiment (the UI nests runs within one)
            exp_id = self._exp_id = (active.info.experiment_id if active is not None
                                     else _get_or_create_experiment(client, experiment, art))
            run = None
            if resume_id is not None:  # a killed or failed run of this folder: continue its MLflow run
                try:
                    if client.get_run(resume_id).info.experiment_id == exp_id:
                        run = mlflow.start_run(run_id=resume_id, nested=self.nested)
                        mlflow.set_tags({"resumed": "true"})
                except Exception:  # deleted meanwhile, another store: start a new one
                    run = None
            if run is None:
                parent = None
                if not self.nested:
                    try:
                        parent = sweep_parent(self.cfg, client, exp_id)
                    except Exception as e:  # the run matters more than its place in the tree
                        log.warning("tracking: no parent run for this sweep job (%s)", _reason(e))
                run = mlflow.start_run(experiment_id=exp_id, run_name=self._marker["run_name"],
                                       nested=self.nested, parent_run_id=parent, tags=self._tags(),
                                       description=self._marker["description"])
            self._run_id = run.info.run_id
            # a resumed run holds its params already (MLflow refuses to change one): add the new ones
            held = client.get_run(self._run_id).data.params if resume_id is not None else {}
            todo = {k: v for k, v in params.items() if k not in held}
            if todo:
                mlflow.log_params(todo)
            mlflow.log_artifact(str(cfg_path))
            try:
                mark_dead_runs_killed(client, exp_id, self.cfg, keep=self._run_id)
            except Exception as e:  # housekeeping of other runs: never this run's failure
                log.warning("tracking: could not check for dead runs (%s)", _reason(e))

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
              nested: bool = False, groups: tuple[str, ...] | None = None,
              params: dict | None = None, description: str | None = None) -> RunTracker:
    """``with track_run(cfg, run_dir, "profile") as tr: tr.log_metrics(...)``. ``params``:
    what the task used, flat (``Task.params``); without it, the config groups in ``groups``
    (all of them without that). ``tags`` add to task, space, device, commit and folder."""
    return RunTracker(cfg, run_dir, task, tags=tags, nested=nested, groups=groups, params=params,
                      description=description)


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
