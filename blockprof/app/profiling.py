"""Block profiling, the paper's sampling method.

A *group* is one or more slots fixed together (the seed's `--blocks` entry; `all`
gives one group per slot). For every group, N archs are drawn and the group's
slots forced into them; every metric scores them in one batch. A random baseline
of N unconstrained archs is profiled too; when the slot groups fix the resolution, the
baseline is sampled at that resolution as well.

Sampling uses common random numbers: every group starts from the same N base
archs (the baseline itself), so a block's difference from the baseline is a
paired comparison and the heatmaps are far less noisy than with independent
draws. Each group's own generator (for the layers a depth raise adds) is seeded
from (seed, group index), so results do not depend on chunking, resuming or
sharding.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write, atomic_write_text, write_csv
from blockprof.core.space import Arch, DesignSpace, Slot

logger = logging.getLogger(__name__)

STATS = ("mean", "std", "q01", "q05", "q95", "q99", "min", "max")
QUANTILES = {"q01": 0.01, "q05": 0.05, "q95": 0.95, "q99": 0.99}
BASELINE = "random"


@dataclass(frozen=True)
class Group:
    index: int               # 1-based; 0 is the random baseline
    slots: tuple[Slot, ...]  # empty for the baseline

    @property
    def label(self) -> str:
        if not self.slots:
            return BASELINE
        return ";".join(f"u{s.unit}l{s.layer}:{s.block}" + (f"@{s.resolution}" if s.resolution else "")
                        for s in self.slots)


def make_groups(space: DesignSpace, all_slots: bool, blocks: Sequence, resolutions: Sequence[int] | None) -> list[Group]:
    """Baseline first, then the `blocks` groups, then every slot (per resolution if given)."""
    groups: list[tuple[Slot, ...]] = [tuple(g) for g in space.parse_slots(blocks or [])]
    if all_slots:
        res_list = [space.check_resolution(int(r)) for r in resolutions] if resolutions else [None]
        groups += [(Slot(s.unit, s.layer, s.block, r),) for r in res_list for s in space.slots()]
    return [Group(0, ())] + [Group(i + 1, g) for i, g in enumerate(groups)]


def baseline_resolution(groups: Sequence[Group]) -> int | None:
    """The resolution the baseline must be sampled at: the one every slot group fixes, so
    a group's difference from the baseline is the block's alone, not a resolution offset.
    None (sampled per arch) when no group fixes it, or groups fix several or mix."""
    fixed = {s.resolution for g in groups for s in g.slots}
    if len(fixed) == 1 and None not in fixed:
        return int(next(iter(fixed)))
    return None


def base_archs(space: DesignSpace, seed: int, n: int, resolution: int | None = None) -> list[Arch]:
    return space.sample(np.random.default_rng([seed, 0]), n, resolution=resolution)


def group_archs(space: DesignSpace, group: Group, base: list[Arch], seed: int) -> list[Arch]:
    if not group.slots:
        return list(base)
    return space.force_all(base, group.slots, np.random.default_rng([seed, group.index]))


def samples_frame(space: DesignSpace, groups: Sequence[Group], archs_per_group: Sequence[list[Arch]],
                  values: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per group x arch: slot columns (empty for baseline / multi-slot groups), arch, metrics."""
    # the group's columns once per group (same dtype inference as per row), repeated per arch
    per_group = pd.DataFrame([{"group": g.index, "slot": g.label,
                               **space.slot_columns(g.slots[0] if len(g.slots) == 1 else None),
                               "slot_resolution": g.slots[0].resolution if len(g.slots) == 1 else None}
                              for g in groups])
    sizes = np.array([len(archs) for archs in archs_per_group], dtype=np.intp)
    df = per_group.iloc[np.repeat(np.arange(len(groups)), sizes)].reset_index(drop=True)
    df["arch"] = [a.text for archs in archs_per_group for a in archs]
    df["resolution"] = [a.resolution for archs in archs_per_group for a in archs]
    for name, v in values.items():
        df[name] = v
    return df


def summarise(space: DesignSpace, groups: Sequence[Group], samples: pd.DataFrame, metric_names: Sequence[str],
              higher_is_better: dict[str, bool]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary: one row per group with the seed's stats, extremes: best/worst arch per group and metric)."""
    order = {g.index: i for i, g in enumerate(groups)}
    samples = samples.sort_values("group", kind="stable", key=lambda s: s.map(order))
    sizes = samples.groupby("group", sort=False).size()
    n = int(sizes.iloc[0])
    if not (sizes == n).all():
        raise ValueError("every group must hold the same number of archs")
    G = len(groups)
    summary = []
    for g in groups:
        cols = space.slot_columns(g.slots[0] if len(g.slots) == 1 else None)
        summary.append({"group": g.index, "slot": g.label, **cols,
                        "block": BASELINE if not g.slots else (g.slots[0].block if len(g.slots) == 1 else "+".join(s.block for s in g.slots)),
                        "resolution": g.slots[0].resolution if len(g.slots) == 1 else None,
                        "description": "Random baseline" if not g.slots else "; ".join(space.describe(s) for s in g.slots),
                        "n": n})
    summary = pd.DataFrame(summary)
    extremes = []
    arch_mat = samples["arch"].to_numpy().reshape(G, n)
    res_mat = samples["resolution"].to_numpy().reshape(G, n)
    for m in metric_names:
        v = samples[m].to_numpy(dtype=np.float64).reshape(G, n)
        summary[f"{m}_mean"] = v.mean(axis=1)
        summary[f"{m}_std"] = v.std(axis=1)
        for key, q in QUANTILES.items():
            summary[f"{m}_{key}"] = np.quantile(v, q, axis=1)
        summary[f"{m}_min"] = v.min(axis=1)
        summary[f"{m}_max"] = v.max(axis=1)
        best = v.argmax(axis=1) if higher_is_better[m] else v.argmin(axis=1)
        worst = v.argmin(axis=1) if higher_is_better[m] else v.argmax(axis=1)
        r = np.arange(G)
        extremes.append(pd.DataFrame({
            "group": summary["group"], "slot": summary["slot"], "metric": m,
            "best_arch": arch_mat[r, best], "best_resolution": res_mat[r, best], "best_value": v[r, best],
            "worst_arch": arch_mat[r, worst], "worst_resolution": res_mat[r, worst], "worst_value": v[r, worst]}))
    return summary, pd.concat(extremes, ignore_index=True)


# ------------------------------------------------------------------ resume
class ChunkStore:
    """Finished chunks of a profile, one CSV each, written atomically. A rerun into
    the same folder loads them and scores only what is missing.

    A chunk is only reused when it holds exactly the archs the settings give for its
    groups and a value per metric; a damaged one (truncated, edited, of another
    chunking) is profiled again, which is always safe."""

    SETTINGS = "settings.json"

    def __init__(self, run_dir: Path, create: bool = True):
        self.dir = Path(run_dir) / "profile_chunks"
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, first_group: int) -> Path:
        return self.dir / f"groups_{first_group:06d}.csv"

    def check_settings(self, key: str, record: bool = True) -> None:
        """Refuse the chunks of another profile; record `key` for a later resume."""
        meta = self.dir / self.SETTINGS
        if meta.exists():
            try:
                found = json.loads(meta.read_text()).get("key")
            except (OSError, ValueError, AttributeError):
                raise UserError(f"{meta} is damaged, so the chunks profiled beside it cannot be trusted; delete "
                                f"{self.dir} to profile from scratch, or use a new run folder") from None
            if found != key:
                raise UserError(f"{self.dir.parent} holds a profile with other settings; use a new run folder")
        elif record:
            atomic_write_text(meta, json.dumps({"key": key}))

    def load(self, first_group: int, groups: Sequence[Group] | None = None,
             archs: Sequence[Sequence[Arch]] | None = None,
             metric_names: Sequence[str] = ()) -> pd.DataFrame | None:
        """The chunk's rows if present and intact (checked against the expected `groups`
        and `archs` when given), else None."""
        p = self.path(first_group)
        if not p.exists():
            return None
        try:
            df = pd.read_csv(p, keep_default_na=True)
            why = None if groups is None or archs is None else _chunk_damage(df, groups, archs, metric_names)
        except (OSError, ValueError, pd.errors.ParserError) as exc:  # incl. UnicodeDecodeError, EmptyDataError
            why = " ".join(str(exc).split())[:120] or type(exc).__name__
        if why is None:
            return df
        logger.warning("profile chunk %s is damaged (%s); profiling its groups again", p, why)
        return None

    def save(self, first_group: int, df: pd.DataFrame) -> None:
        atomic_write(self.path(first_group), lambda p: write_csv(df, p), durable=True)


def _chunk_damage(df: pd.DataFrame, groups: Sequence[Group], archs: Sequence[Sequence[Arch]],
                  metric_names: Sequence[str]) -> str | None:
    """Why a loaded chunk cannot be the one these groups and archs produce, or None."""
    flat = [x for a in archs for x in a]
    missing = [c for c in ("group", "arch", "resolution", *metric_names) if c not in df.columns]
    if missing:
        return f"lacks column(s) {', '.join(missing)}"
    if len(df) != len(flat):
        return f"{len(df)} rows, expected {len(flat)}"
    if list(pd.to_numeric(df["group"], errors="coerce")) != [g.index for g, a in zip(groups, archs) for _ in a]:
        return "other slot groups than these settings give"
    if list(df["arch"].astype(str)) != [x.text for x in flat] or \
            list(pd.to_numeric(df["resolution"], errors="coerce")) != [x.resolution for x in flat]:
        return "other archs than these settings give"
    for m in metric_names:
        v = pd.to_numeric(df[m], errors="coerce")
        if v.isna().any() and not df[m].isna().all():  # all-NaN: a metric that skipped every arch
            return f"non-numeric {m} values"
    return None
