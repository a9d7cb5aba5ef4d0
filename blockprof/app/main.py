"""The one place a composed config becomes a run: validate, build the space, the task and
the metrics, open the MLflow run, hand over to the task.

Order matters for "bad input leaves nothing behind": everything that can fail on the
user's input (schema, metric combination, the task's own checks) runs before the run
folder is written to and before the MLflow run opens; a user error that still happens
later removes the run folder Hydra made when it holds nothing of value.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from blockprof.app.device import check_identity, hydra_device_choice
from blockprof.app.errors import one_line_user_error
from blockprof.app.metric_factory import build_metrics, check_metric_config
from blockprof.app.rundir import run_dir_of
from blockprof.app.schema import unknown_keys
from blockprof.app.task import Task
from blockprof.common.errors import UserError
from blockprof.core.space import DesignSpace
from blockprof.infra.tracking import (RUN_LOCK, claim_run_dir, experiment_name, lock_held, resolve_output_root,
                                      track_run)
from blockprof.metrics.base import Metric

log = logging.getLogger(__name__)
GROUPS = ("space", "device", "metric", "task", "tracking")
SPACE_APP_KEYS = ("hv_reference",)
# files Hydra and logging put in every run folder: a folder holding only these is empty
_NO_VALUE = {".hydra", "run.log", "config.yaml", "tracking.json", RUN_LOCK}
MAX_EXPERIMENT_NAME = 256  # MLflow stores experiment names in a 256-character column
# archs a task samples at once: their encodings alone take about 40 bytes each, so a
# billion cannot fit in memory; 10 million is hours of scoring already
MAX_ARCHS = 10_000_000
THREAD_KEYS = ("task.threads", "device.latency.threads", "metric.accuracy.threads")


@dataclass
class RunContext:
    """What every task gets: the config, the space, a seeded generator, the run folder."""
    cfg: DictConfig
    space: DesignSpace
    rng: np.random.Generator
    run_dir: Path
    _metrics: dict | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, Metric]:
        """Built on first use: tasks that never score (measure) never load tables or predictors."""
        if self._metrics is None:
            self._metrics = build_metrics(self.cfg, self.space)
            for m in self._metrics.values():
                m.bind_run_dir(self.run_dir)
        return self._metrics

    @property
    def output_root(self) -> Path:
        return resolve_output_root(self.cfg)


def space_from_config(cfg: DictConfig) -> DesignSpace:
    """`space._target_` builds the design space from the group's keys."""
    # keys the app reads itself, not the family constructor
    build = OmegaConf.masked_copy(cfg.space, [k for k in cfg.space if k not in SPACE_APP_KEYS])
    try:
        return instantiate(build, _convert_="all")
    except UserError:
        raise
    except Exception as exc:  # instantiate wraps the constructor's own UserError
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def build_task(cfg: DictConfig) -> Task:
    """`task._target_` names a Task class; it gets the `task` node."""
    target = cfg.task.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task '{cfg.task.get('name')}' names no Task class (_target_ {target})")
    return cls(cfg.task)


def validate(cfg: DictConfig) -> None:
    """Checks that need more than the schema: fail at start with one line."""
    for key in GROUPS:
        if key not in cfg:
            raise UserError(f"config lacks the '{key}' group")
    check_identity(cfg, hydra_device_choice(), _hydra_overrides())
    extra = unknown_keys(cfg)
    if extra:
        key, known = extra[0]
        raise UserError(f"unknown config key '{key}' (known here: {', '.join(k for k in known if not k.startswith('_'))})")
    if cfg.seed < 0:
        raise UserError(f"seed must be a non-negative integer, not {cfg.seed!r}")
    if cfg.tracking.backend not in ("local", "none", "server"):
        raise UserError(f"unknown tracking.backend '{cfg.tracking.backend}' (local, none, server)")
    name = experiment_name(cfg, str(cfg.task.name))
    if not str(cfg.tracking.experiment).strip() or len(name) > MAX_EXPERIMENT_NAME or not name.isprintable():
        raise UserError(f"tracking.experiment must be 1-{MAX_EXPERIMENT_NAME} printable characters "
                        f"(got {len(name)})")
    n = cfg.task.get("num_archs")
    if n is not None and int(n) > MAX_ARCHS:
        raise UserError(f"task.num_archs must be at most {MAX_ARCHS:,}, not {n}")
    for key in THREAD_KEYS:
        threads = OmegaConf.select(cfg, key, default=None)
        if threads is not None and int(threads) < 1:
            raise UserError(f"{key} is a number of CPU threads: at least 1, not {threads}")
    check_writable(resolve_output_root(cfg), "paths.output_root")
    check_metric_config(cfg, cfg.space.name, notify=False)


def _hydra_overrides() -> list[str]:
    """The command line's overrides of the Hydra job this process runs (none outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:  # noqa: BLE001
        return []


def check_writable(path: Path, what: str) -> None:
    """`path` is, or can become, a folder this process may write to (nothing is created)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{what} {path} lies inside {probe}, which is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable ({probe} refuses writes); pick another folder")


@dataclass
class Outcome:
    task: Task
    result: object

    @property
    def objective(self) -> float | None:
        return self.task.objective_value(self.result)


def command_and_overrides(cfg: DictConfig) -> tuple[str, list[str]]:
    """The command that reruns this run and its overrides: the command line's, or the
    Python API's `compose` list."""
    from hydra.core.hydra_config import HydraConfig

    from blockprof.app.compose import overrides_of
    from blockprof.infra.tracking import command_line

    if HydraConfig.initialized():
        return command_line(cfg), list(HydraConfig.get().overrides.task)
    overrides = overrides_of(cfg)
    if overrides is None:
        return "blockprof.run(cfg) (Python API, a config not made by blockprof.compose)", []
    return f"blockprof.run(blockprof.compose({overrides!r}))", overrides


def log_header(cfg: DictConfig, run_dir: Path) -> None:
    """The first lines of run.log: how to run this again and what ran (command line, overrides,
    commit). To the log file only: the person at the console typed the command."""
    from blockprof.infra.tracking import file_logger, git_commit

    lg = file_logger("blockprof.run")
    command, overrides = command_and_overrides(cfg)
    lg.info("command: %s", command)
    lg.info("overrides: %s", " ".join(overrides) if overrides else "(none)")
    lg.info("git commit: %s; run folder: %s", git_commit(), run_dir)


def run(cfg: DictConfig, run_dir: Path | None = None) -> Outcome:
    """Validate, build and run the configured task. Raises UserError on bad input."""
    run_dir = Path(run_dir) if run_dir else run_dir_of(cfg, create=False)
    # run.log opens with the header; a folder that already has a log (a resume, or another
    # run's folder) gets it only once the input is accepted and the folder is ours, so a
    # refused rerun leaves that log as it was
    run_log = run_dir / "run.log"
    header_first = not (run_log.is_file() and run_log.stat().st_size > 0)
    if header_first:
        log_header(cfg, run_dir)
    validate(cfg)
    task = build_task(cfg)
    completed = task.complete_config(cfg)
    if completed is not cfg:  # the task's inputs filled in settings (merge_profile: its shards')
        cfg, task.cfg = completed, completed.task
    space = space_from_config(cfg)
    torch.manual_seed(cfg.seed)
    ctx = RunContext(cfg, space, np.random.default_rng(cfg.seed), run_dir)
    # metrics are built, and the task's own checks run, before the run opens:
    # a bad combination leaves nothing behind
    if task.needs_metrics:
        ctx.metrics
    task.validate(ctx)
    # only now is the folder taken (refused when another live run or another task's run
    # holds it) and written to
    claim = claim_run_dir(run_dir, str(cfg.task.name))
    try:
        if not header_first:
            log_header(cfg, run_dir)
        _save_hydra_files(cfg, run_dir)
        with track_run(cfg, run_dir, task=str(cfg.task.name), groups=task.groups,
                       params=task.params(ctx), tags=task.tags(ctx),
                       description=command_and_overrides(cfg)[0]) as tracker:
            if tracker.run_id:
                log.info("MLflow run %s (experiment %s): %s%s", tracker.run_id, experiment_name(cfg, str(cfg.task.name)),
                         tracker.url, "" if str(tracker.uri).startswith("http") else
                         f" once `mlflow ui --backend-store-uri {tracker.uri}` serves the store")
            result = task.run(ctx, tracker)
            outcome = Outcome(task, result)
            if outcome.objective is not None:
                tracker.log_metrics({f"objective.{cfg.task.objective}": outcome.objective})
    finally:
        claim.release()
    return outcome


def _save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes to `<run>/.hydra` (`hydra.output_subdir` is null in conf/config.yaml
    so that Hydra cannot overwrite another run's files before the folder is claimed)."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    out = run_dir / ".hydra"
    out.mkdir(exist_ok=True)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(job, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}), out / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), out / "overrides.yaml")


def execute(cfg: DictConfig, run_dir: Path | None = None):
    """Run the configured task; returns what the task returns (the Python API and tests)."""
    return run(cfg, run_dir).result


def main_entry(cfg: DictConfig) -> float | None:
    """Hydra's job function: returns the task's objective (for sweepers such as Optuna);
    user errors end in one line and a non-zero exit."""
    run_dir = run_dir_of(cfg)
    fresh = not (run_dir.is_dir() and any(run_dir.iterdir()))  # Hydra just made it (not a resume)
    try:
        outcome = run(cfg, run_dir)
    except (UserError, OSError) as exc:
        line = one_line_user_error(exc)  # an OSError naming a file is the file system's answer, not a bug
        if line is None:
            raise
        if fresh:
            remove_if_empty(run_dir)
        print(f"error: {line}", file=sys.stderr)
        if _in_multirun():
            raise  # let the sweep record this job as failed and go on
        sys.exit(2)
    if outcome.objective is not None:
        log.info("objective %s = %.6g", cfg.task.objective, outcome.objective)
    return outcome.objective


def remove_if_empty(run_dir: Path) -> None:
    """Drop the run folder Hydra made for a run that failed before writing anything."""
    try:
        if _held_by_a_live_run(run_dir):
            return  # another run's folder, not ours to remove
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _NO_VALUE:
            logging.shutdown()  # close run.log before removing it
            shutil.rmtree(run_dir, ignore_errors=True)
            # and the folders above it that this run made (runs/<task>/<space>-<device>/)
            parent = run_dir.parent
            for _ in range(3):
                if not parent.is_dir() or any(parent.iterdir()) or parent.name in ("multirun",):
                    break
                parent.rmdir()
                parent = parent.parent
    except OSError:
        pass


def _held_by_a_live_run(run_dir: Path) -> bool:
    """Whether a live process holds the folder's run lock (it is released when a run ends or dies)."""
    return bool(lock_held(run_dir / RUN_LOCK))


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False

