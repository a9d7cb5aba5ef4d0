"""The functions ``import blockprof`` exposes besides the space and ``compose``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from blockprof.app.main import run as run_task
from blockprof.app.main import space_from_config, validate
from blockprof.app.metric_factory import build_metrics
from blockprof.app.rundir import run_dir_of
from blockprof.common.errors import UserError
from blockprof.core.space import Arch
from blockprof.metrics.base import Metric
from blockprof.metrics.base import score as score_all

log = logging.getLogger("blockprof")
_METRICS: dict[str, dict[str, Metric]] = {}  # built metric sets by the config they come from


def _check_cfg(cfg) -> None:
    if not isinstance(cfg, DictConfig) or "task" not in cfg:
        raise UserError(f"expected a config from blockprof.compose([...]), got {type(cfg).__name__}")


def metrics_for(cfg: DictConfig) -> dict[str, Metric]:
    """The metric objects of ``cfg`` (its space, device and metric set), by name.

    Built once per configuration (lookup tables and predictors are loaded then) and reused
    by later calls with the same space, device, metrics and paths."""
    _check_cfg(cfg)
    key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in ("space", "device", "metric", "paths", "data",
                                                                     "seed") if k in cfg]))
    if key not in _METRICS:
        validate(cfg)
        _METRICS[key] = build_metrics(cfg, space_from_config(cfg))
    return _METRICS[key]


def score(cfg: DictConfig, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
    """Every metric of ``cfg`` over ``archs``: ``{name: array}`` in the order of ``archs``,
    one batched call per metric (units: ``metrics_for(cfg)[name].unit``)."""
    archs = list(archs)
    if not all(isinstance(a, Arch) for a in archs):
        raise UserError("score takes Arch values (space.sample(...), space.parse(...))")
    return score_all(metrics_for(cfg), archs)


class _RunLog:
    """Logging for a run started from Python: INFO lines on the console (when the caller set
    up no logging of their own) and everything in ``<run folder>/run.log``, as on the
    command line."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.handlers = run_dir, []

    def __enter__(self):
        root = logging.getLogger()
        if not root.handlers:
            console = logging.StreamHandler(sys.stdout)
            console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
            self.handlers.append(console)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(self.run_dir / "run.log", delay=True)
        file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
        self.handlers.append(file)
        self.level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        for h in self.handlers:
            root.addHandler(h)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(self.level)
        return False


def run(cfg: DictConfig, run_dir: str | Path | None = None):
    """Run ``cfg``'s task as ``python run.py`` would: the same folder
    (``<output_root>/runs/<task>/<space>-<device>/<time>``, or ``run_dir``), the same
    ``run.log`` and MLflow run; returns the task's result (search: scored archs, front,
    history; profile: the summary table). Bad input raises :class:`blockprof.UserError`
    and leaves no folder behind."""
    from blockprof.app.main import remove_if_empty

    _check_cfg(cfg)
    folder = Path(run_dir) if run_dir else run_dir_of(cfg)
    fresh = not (folder.is_dir() and any(folder.iterdir()))
    try:
        with _RunLog(folder):
            return run_task(cfg, folder).result
    except UserError:
        if fresh:
            remove_if_empty(folder)
        raise
    except OSError as exc:  # a file the file system refused (read-only, full, no permission): the caller's to fix
        from blockprof.app.errors import one_line_user_error

        line = one_line_user_error(exc)
        if line is None:
            raise
        if fresh:
            remove_if_empty(folder)
        raise UserError(line) from exc
