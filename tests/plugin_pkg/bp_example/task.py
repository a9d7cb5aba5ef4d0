"""A task from outside blockprof: count how often each block occurs in sampled archs."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from blockprof.app.schema import TaskConfig
from blockprof.app.task import Task
from blockprof.common.errors import UserError


@dataclass
class BlockCountConfig(TaskConfig):
    name: str = "block_count"
    needs_metrics: bool = False
    num_archs: int = 20


class BlockCountTask(Task):
    Config = BlockCountConfig
    groups = ("space",)

    def validate(self, ctx) -> None:
        if self.cfg.num_archs < 1:
            raise UserError(f"task.num_archs must be >= 1, not {self.cfg.num_archs}")

    def run(self, ctx, tracker):
        archs = ctx.space.sample(ctx.rng, int(self.cfg.num_archs))
        counts = Counter(b for a in archs for unit in a.units for b in unit)
        df = pd.DataFrame(sorted(counts.items()), columns=["block", "count"])
        tracker.log_table(df, "block_counts.csv")
        return {"blocks": float(len(counts))}
