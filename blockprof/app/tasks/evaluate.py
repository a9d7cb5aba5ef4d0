"""task=evaluate: score N sampled archs (or archs from a seed-format CSV) on every metric."""
from __future__ import annotations

import numpy as np
import pandas as pd

from blockprof.common.errors import UserError
from blockprof.core.latency_csv import read_archs_csv
from blockprof.metrics.base import score


def archs_to_score(ctx):
    t = ctx.cfg.task
    if t.archs_csv:
        return read_archs_csv(t.archs_csv, ctx.space)
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
    print(f"scored {len(archs)} archs -> {ctx.run_dir / 'archs.csv'}")
    return df
