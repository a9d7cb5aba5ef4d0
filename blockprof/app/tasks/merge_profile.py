"""task=merge_profile: join the run folders of a sharded profile into one profile."""
from __future__ import annotations

import logging

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from blockprof.common.errors import UserError
from blockprof.app.tasks.profile import all_groups, write_outputs
from blockprof.app.task import Task

log = logging.getLogger(__name__)

# settings that must agree between the shards and this merge
_SAME = ("seed", "space.name", "space.resolutions", "device.name", "metric.names", "task.num_archs",
         "task.all", "task.blocks", "task.resolutions")


def run(ctx, tracker):
    cfg = ctx.cfg
    inputs = [Path(p) for p in cfg.task.inputs or []]
    if not inputs:
        raise UserError("task.inputs is empty: give the shards' run folders, e.g. task.inputs='[dir0,dir1]'")
    groups = all_groups(cfg, ctx.space)
    frames = []
    for d in inputs:
        samples, shard_cfg = d / "samples.csv", d / "config.yaml"
        if not samples.exists() or not shard_cfg.exists():
            raise UserError(f"{d} is not a finished profile run (no samples.csv / config.yaml)")
        sc = OmegaConf.load(shard_cfg)
        for key in _SAME:
            mine, theirs = OmegaConf.select(cfg, key), OmegaConf.select(sc, key)
            if OmegaConf.to_container(OmegaConf.create({"v": mine}))["v"] != \
                    OmegaConf.to_container(OmegaConf.create({"v": theirs}))["v"]:
                raise UserError(f"{d}: shard setting {key}={theirs} differs from this merge's {mine}")
        frames.append(pd.read_csv(samples))
    # the baseline is in every shard: keep each group from the first folder that has it
    seen: set[int] = set()
    parts = []
    for df in frames:
        new = df[~df["group"].isin(seen)]
        seen |= set(new["group"])
        parts.append(new)
    samples = pd.concat(parts, ignore_index=True)
    missing = sorted({g.index for g in groups} - set(samples["group"]))
    if missing:
        raise UserError(f"the shards lack {len(missing)} slot group(s), e.g. group {missing[0]}: "
                        "give every shard's folder")
    summary = write_outputs(ctx, tracker, groups, samples)
    log.info("merged %d shards: %d slot groups -> %s", len(inputs), len(groups) - 1, ctx.run_dir)
    return summary


class MergeProfileTask(Task):
    """Join the folders of a sharded profile."""
    groups = ("space", "device", "metric")

    def validate(self, ctx) -> None:
        _check_inputs(ctx.cfg)

    def run(self, ctx, tracker):
        return run(ctx, tracker)


def _check_inputs(cfg) -> None:
    """Every shard folder is there and finished, before the run opens."""
    inputs = [Path(p) for p in cfg.task.inputs or []]
    if not inputs:
        raise UserError("task.inputs is empty: give the shards' run folders, e.g. task.inputs='[dir0,dir1]'")
    for d in inputs:
        if not (d / "samples.csv").is_file() or not (d / "config.yaml").is_file():
            raise UserError(f"{d} is not a finished profile run (no samples.csv / config.yaml)")
