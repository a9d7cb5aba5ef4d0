"""The functions `import blockprof` exposes besides the space and `compose`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig

from blockprof.app.main import run as run_task
from blockprof.app.main import space_from_config, validate
from blockprof.app.metric_factory import build_metrics
from blockprof.core.space import Arch
from blockprof.metrics.base import Metric
from blockprof.metrics.base import score as score_all


def metrics_for(cfg: DictConfig) -> dict[str, Metric]:
    """The metric objects of `cfg` (its space, device and metric set), by name."""
    validate(cfg)
    return build_metrics(cfg, space_from_config(cfg))


def score(cfg: DictConfig, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
    """Every metric of `cfg` over `archs`, one batched call per metric."""
    return score_all(metrics_for(cfg), list(archs))


def run(cfg: DictConfig, run_dir: str | Path | None = None):
    """Run `cfg`'s task as `python run.py` would (tracked as configured); returns the
    task's result (search: scored archs, front, history; profile: the summary table)."""
    return run_task(cfg, Path(run_dir) if run_dir else None).result
