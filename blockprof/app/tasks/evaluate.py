"""task=evaluate: score N sampled archs, or the archs of a list, on every metric.

    python run.py task=evaluate task.num_archs=100
    python run.py task=evaluate task.archs_csv=outputs/runs/search/<run>/front.csv

`task.archs_csv` takes any arch list blockprof reads (blockprof/core/archlist.py):
a seed-format latency CSV, an evaluate archs.csv, a search scored/front/best.csv,
a profile samples.csv.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from blockprof.common.errors import UserError
from blockprof.core.archlist import read_archs
from blockprof.infra.tracking import resolve_path
from blockprof.metrics.base import score
from blockprof.app.task import Task

log = logging.getLogger(__name__)


def archs_to_score(ctx):
    t = ctx.cfg.task
    if t.archs_csv:
        return read_archs(resolve_path(t.archs_csv, ctx.cfg), ctx.space)
    if int(t.num_archs) < 1:
        raise UserError(f"task.num_archs must be >= 1, not {t.num_archs}")
    return ctx.space.sample(np.random.default_rng(ctx.cfg.seed), int(t.num_archs))


def validate(ctx) -> None:
    """Called by the app before the MLflow run opens: a bad CSV or count fails here."""
    archs_to_score(ctx)


def run(ctx, tracker):
    archs = archs_to_score(ctx)
    values = score(ctx.metrics, archs)
    df = pd.DataFrame({"net_id": np.arange(len(archs)), "arch": [a.text for a in archs],
                       "resolution": [a.resolution for a in archs], **values})
    tracker.log_table(df, "archs.csv")
    units = {name: m.unit for name, m in ctx.metrics.items()}
    tracker.set_tags({f"unit.{k}": v for k, v in units.items()})
    summary = {}
    for name, v in values.items():
        summary.update({f"{name}_mean": float(np.mean(v)), f"{name}_min": float(np.min(v)),
                        f"{name}_max": float(np.max(v))})
    tracker.log_metrics({"num_archs": len(archs), **summary})
    log.info("scored %d archs -> %s", len(archs), ctx.run_dir / "archs.csv")
    return df


class EvaluateTask(Task):
    """Score sampled archs or an arch list on every metric."""
    groups = ("space", "device", "metric")

    def validate(self, ctx) -> None:
        validate(ctx)

    def params(self, ctx):
        p = super().params(ctx)
        t = self.cfg
        p["task.num_archs"] = len(archs_to_score(ctx))  # from archs_csv: the archs it holds
        if t.archs_csv:
            p["task.archs_csv"] = str(resolve_path(t.archs_csv, ctx.cfg))
        return p

    def run(self, ctx, tracker):
        return run(ctx, tracker)
