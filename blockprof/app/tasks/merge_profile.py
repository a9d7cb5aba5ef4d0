"""task=merge_profile: join the run folders of a sharded profile into one profile.

    python run.py task=merge_profile 'task.inputs=[<shard 0 folder>,<shard 1 folder>]'

The merge takes its settings from the shards (their `config.yaml`): seed, space, device,
metric set, `task.num_archs`, `task.all`, `task.blocks`, `task.resolutions`. The shards
must agree on them; a setting also given on the command line must match theirs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from blockprof.app.task import Task
from blockprof.app.tasks.profile import all_groups, write_outputs
from blockprof.common.errors import UserError
from blockprof.infra.tracking import resolve_path

log = logging.getLogger(__name__)

# settings the shards must share, and that the merge takes from them
_SAME = ("seed", "space.name", "space.resolutions", "space.width_mult", "device.name", "metric.names",
         "task.num_archs", "task.all", "task.blocks", "task.resolutions")
_GROUPS = ("space", "device", "metric")  # taken whole: the shards' metrics are rebuilt from them
_TASK_KEYS = ("num_archs", "all", "blocks", "resolutions")


def _plain(value):
    return OmegaConf.to_container(OmegaConf.create({"v": value}), resolve=True)["v"]


def _inputs(cfg) -> list[Path]:
    inputs = [resolve_path(p, cfg) for p in cfg.task.inputs or []]
    if not inputs:
        raise UserError("task.inputs is empty: give the shards' run folders, e.g. task.inputs='[dir0,dir1]'")
    return inputs


def _shard_config(d: Path):
    samples, shard_cfg = d / "samples.csv", d / "config.yaml"
    if not samples.exists() or not shard_cfg.exists():
        raise UserError(f"{d} is not a finished profile run (no samples.csv / config.yaml)")
    try:
        return OmegaConf.load(shard_cfg)
    except Exception as exc:
        raise UserError(f"{shard_cfg}: cannot read the shard's settings ({' '.join(str(exc).split())[:160]})") from None


def _explicit(cfg, key: str) -> str | None:
    """The override (command line, or `blockprof.compose`) that sets `key` or its whole group."""
    from hydra.core.hydra_config import HydraConfig

    from blockprof.app.compose import overrides_of

    overrides = overrides_of(cfg)
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    group = key.split(".")[0]
    for o in overrides:
        k = o.split("=", 1)[0].lstrip("+~")
        if k == key or (group != "task" and k == group) or key.startswith(k + "."):
            return o
    return None


def complete_config(cfg):
    """`cfg` with the shards' settings (see the module docstring); one line when the shards
    disagree or the command line asks for something else."""
    inputs = _inputs(cfg)
    shards = [(d, _shard_config(d)) for d in inputs]
    first_dir, first = shards[0]
    for d, sc in shards[1:]:
        for key in _SAME:
            a, b = _plain(OmegaConf.select(first, key)), _plain(OmegaConf.select(sc, key))
            if a != b:
                raise UserError(f"shards disagree: {first_dir} has {key}={a}, {d} has {key}={b}")
    for key in _SAME:
        mine, theirs = _plain(OmegaConf.select(cfg, key)), _plain(OmegaConf.select(first, key))
        given = _explicit(cfg, key)
        if given is not None and mine != theirs:
            raise UserError(f"{first_dir}: shard setting {key}={theirs} differs from this merge's {mine} "
                            f"(from {given}); leave it out to take the shards' settings")
    out = cfg.copy()
    for group in _GROUPS:
        if group in first:
            # replaced whole (not merged: another device's latency keys must not linger), typed
            # by the group's own schema so the run config stays validated
            schema = OmegaConf.get_type(out, group)
            node = OmegaConf.merge(OmegaConf.structured(schema), first[group]) if schema not in (None, dict) \
                else first[group]
            out[group] = node
    OmegaConf.update(out, "seed", first.seed)
    for k in _TASK_KEYS:
        if k in first.task:
            OmegaConf.update(out, f"task.{k}", first.task[k], merge=False)
    return out


def run(ctx, tracker):
    cfg = ctx.cfg
    inputs = _inputs(cfg)
    groups = all_groups(cfg, ctx.space)
    frames = [pd.read_csv(d / "samples.csv") for d in inputs]
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
    """Join the folders of a sharded profile (settings taken from the shards)."""
    groups = ("space", "device", "metric")

    def complete_config(self, cfg):
        return complete_config(cfg)

    def validate(self, ctx) -> None:
        all_groups(ctx.cfg, ctx.space)  # the shards' slot groups fit the space they name

    def params(self, ctx):
        p = super().params(ctx)
        p["task.inputs"] = [str(d) for d in _inputs(ctx.cfg)]
        for k in ("shard_index", "num_shards", "chunk_archs"):  # profile keys a merge does not use
            p.pop(f"task.{k}", None)
        return p

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
