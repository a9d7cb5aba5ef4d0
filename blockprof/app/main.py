"""The one place a composed config becomes a run: validate, build the space and
metrics, open the MLflow run, hand over to the task."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_method
from omegaconf import DictConfig

from blockprof.common.errors import UserError
from blockprof.metrics.base import Metric
from blockprof.app.metric_factory import build_metrics, check_metric_config
from blockprof.core.space import DesignSpace, build_space
from blockprof.infra.tracking import resolve_output_root, track_run


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
            for m in self._metrics.values():  # memoising metrics (supernet accuracy) keep their memo here
                if hasattr(m, "bind_run_dir"):
                    m.bind_run_dir(self.run_dir)
        return self._metrics

    @property
    def output_root(self) -> Path:
        return resolve_output_root(self.cfg)


def space_from_config(cfg: DictConfig) -> DesignSpace:
    s = cfg.space
    return build_space(s.name, resolutions=list(s.resolutions), width_mult=s.get("width_mult"))


def validate(cfg: DictConfig) -> None:
    """Checks that need more than YAML: fail at start with one line."""
    for key in ("space", "device", "metric", "task", "tracking"):
        if key not in cfg:
            raise UserError(f"config lacks the '{key}' group")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise UserError(f"seed must be a non-negative integer, not {cfg.seed!r}")
    if cfg.tracking.backend not in ("local", "none", "server"):
        raise UserError(f"unknown tracking.backend '{cfg.tracking.backend}' (local, none, server)")
    check_metric_config(cfg, cfg.space.name, notify=False)


def run_dir_of(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # composed outside a Hydra app (tests): a fresh folder under output_root
        import tempfile
        root = resolve_output_root(cfg) / "runs" / str(cfg.task.name)
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=root))


def execute(cfg: DictConfig, run_dir: Path | None = None):
    """Run the configured task; returns what the task returns. Raises UserError on bad input."""
    validate(cfg)
    space = space_from_config(cfg)
    run_dir = Path(run_dir) if run_dir else run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    ctx = RunContext(cfg, space, np.random.default_rng(cfg.seed), run_dir)
    try:
        task = get_method(cfg.task._target_)
    except Exception:
        raise UserError(f"task '{cfg.task.get('name')}' has no runnable target '{cfg.task.get('_target_')}'") from None
    # metrics are built, and the task's own checks run, before the run opens:
    # a bad combination leaves nothing behind
    if cfg.task.get("needs_metrics", True):
        ctx.metrics
    check = getattr(sys.modules.get(task.__module__), "validate", None)
    if check is not None:
        check(ctx)
    with track_run(cfg, run_dir, task=str(cfg.task.name)) as tracker:
        return task(ctx, tracker)


def main_entry(cfg: DictConfig):
    """Hydra's job function: user errors end in one line and a non-zero exit."""
    try:
        return execute(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if _in_multirun():
            raise  # let the sweep record this job as failed and go on
        sys.exit(2)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False
