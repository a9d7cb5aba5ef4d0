"""task=profile (the default): block profiling with summaries, extremes and heatmaps."""
from __future__ import annotations

import hashlib
import json
import logging
import math

import numpy as np
import pandas as pd

from blockprof.infra import plots
from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write, write_csv
from blockprof.metrics.base import score
from blockprof.app.profiling import (BASELINE, ChunkStore, base_archs, baseline_resolution, group_archs, make_groups,
                                     samples_frame, summarise)
from blockprof.common.progress import progress
from blockprof.app.task import Task

log = logging.getLogger(__name__)

logger = logging.getLogger(__name__)


def _settings_key(cfg, groups, metric_names, base_resolution=None) -> str:
    settings = {"seed": cfg.seed, "n": int(cfg.task.num_archs), "space": cfg.space.name,
                "resolutions": list(cfg.space.resolutions), "metrics": list(metric_names),
                "device": cfg.device.name, "groups": [g.label for g in groups]}
    if base_resolution is not None:  # only then: the keys of earlier runs stay valid
        settings["baseline_resolution"] = int(base_resolution)
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def all_groups(cfg, space):
    """Every slot group of the configured profile, baseline first (validated)."""
    t = cfg.task
    if int(t.num_archs) < 1:
        raise UserError(f"task.num_archs must be >= 1, not {t.num_archs}")
    blocks = list(t.blocks or [])
    if not t.all and not blocks:
        raise UserError("nothing to profile: set task.all=true or give task.blocks, e.g. task.blocks='[[1,0,7,6,224]]'")
    return make_groups(space, bool(t.all), blocks, list(t.resolutions or []))


def shard_of(cfg, groups):
    """Shard i of N: every N-th slot group, plus the baseline (each shard summarises on its own)."""
    i, n_shards = int(cfg.task.shard_index), int(cfg.task.num_shards)
    if n_shards < 1 or not 0 <= i < n_shards:
        raise UserError(f"task.shard_index must be in 0..{n_shards - 1} and task.num_shards >= 1 "
                        f"(got {i} of {n_shards})")
    return [g for g in groups if g.index == 0 or (g.index - 1) % n_shards == i]


def validate(ctx) -> None:
    """Called by the app before the MLflow run opens: slot specs, shard settings, and
    whether chunks already in the run folder (a resume) belong to this profile."""
    groups = shard_of(ctx.cfg, all_groups(ctx.cfg, ctx.space))
    if (ctx.run_dir / "profile_chunks").is_dir():
        key = _settings_key(ctx.cfg, groups, list(ctx.metrics), baseline_resolution(groups))
        ChunkStore(ctx.run_dir, create=False).check_settings(key, record=False)


def run(ctx, tracker):
    cfg = ctx.cfg
    groups = shard_of(cfg, all_groups(cfg, ctx.space))
    n = int(cfg.task.num_archs)
    slow = [m for m in ctx.metrics.values() if m.slow]
    # slow metrics: batches of `slots_per_call` slots (resumable), scored arch-major (below)
    per_chunk = (max(1, min(getattr(m, "slots_per_call", 1) for m in slow)) if slow
                 else max(1, int(cfg.task.chunk_archs) // n))
    metric_names = list(ctx.metrics)
    store = ChunkStore(ctx.run_dir)
    base_res = baseline_resolution(groups)
    if base_res is None and any(s.resolution for g in groups for s in g.slots):
        logger.warning("the slot groups fix several resolutions (or some none): the baseline samples the "
                       "resolution, so a fixed-resolution group's difference includes a resolution offset")
    store.check_settings(_settings_key(cfg, groups, metric_names, base_res))

    base = base_archs(ctx.space, cfg.seed, n, resolution=base_res)
    chunks = [groups[i:i + per_chunk] for i in range(0, len(groups), per_chunk)]
    frames, resumed = [], 0
    for chunk in progress(chunks, desc="profiling", total=len(chunks),
                          unit=f"chunks of {per_chunk} slot group(s) x {n} archs"):
        archs = [group_archs(ctx.space, g, base, cfg.seed) for g in chunk]
        done = store.load(chunk[0].index, chunk, archs, metric_names)  # damaged: None, profiled again
        if done is not None:
            frames.append(done)
            resumed += 1
            continue
        flat = [a for group in archs for a in group]
        if slow:  # arch i of every slot side by side: a timing chunk then holds variants of one base arch
            order = np.arange(len(flat)).reshape(len(chunk), n).T.ravel()
            vals = score(ctx.metrics, [flat[j] for j in order])
            vals = {k: v[np.argsort(order)] for k, v in vals.items()}
        else:
            vals = score(ctx.metrics, flat)
        df = samples_frame(ctx.space, chunk, archs, vals)
        store.save(chunk[0].index, df)
        frames.append(df)
    if resumed:
        log.info(f"resumed: {resumed} of {len(chunks)} chunks were already profiled in {ctx.run_dir}")

    samples = pd.concat(frames, ignore_index=True)
    summary = write_outputs(ctx, tracker, groups, samples)
    tracker.set_tags({"shard": f"{cfg.task.shard_index}/{cfg.task.num_shards}"} if cfg.task.num_shards > 1 else {})
    log.info(f"profiled {len(groups) - 1} slot groups x {n} archs (+ baseline) -> {ctx.run_dir}")
    return summary


def write_outputs(ctx, tracker, groups, samples: pd.DataFrame) -> pd.DataFrame:
    """samples.csv, summary.csv, extremes.csv, heatmaps and summary numbers."""
    metric_names = list(ctx.metrics)
    higher = {k: m.higher_is_better for k, m in ctx.metrics.items()}
    summary, extremes = summarise(ctx.space, groups, samples, metric_names, higher)
    for df, name in ((samples, "samples.csv"), (summary, "summary.csv"), (extremes, "extremes.csv")):
        # `tracker.log_table` with the fast CSV writer (samples.csv is ~18k rows for 100 archs)
        tracker.log_artifact(atomic_write(tracker.run_dir / name, lambda p, df=df: write_csv(df, p)))
    _heatmaps(ctx, tracker, summary, metric_names, samples)

    baseline = summary[summary["block"] == BASELINE].iloc[0]
    tracker.log_metrics({"num_groups": len(groups) - 1, "num_archs_scored": len(samples),
                         **{f"baseline_{m}_mean": float(baseline[f"{m}_mean"]) for m in metric_names}})
    tracker.set_tags({f"unit.{k}": m.unit for k, m in ctx.metrics.items()})
    return summary


# the words at the ends of a difference map's colour bar: (lower, higher) than the baseline
_ENDS = {"latency": ("faster", "slower"), "accuracy": ("less accurate", "more accurate"),
         "mmacs": ("fewer MACs", "more MACs"), "params_m": ("fewer params", "more params")}


def _baselines(ctx, samples: pd.DataFrame | None, base: pd.Series, metric: str, panels: list) -> tuple[dict, dict]:
    """The baseline each resolution panel is compared with, and a note saying which.

    One panel: the random baseline. Several (task.resolutions): the baseline's archs are
    drawn at mixed resolutions while a panel's are all at its own, so against the one
    baseline a panel shows mostly the resolution's offset. Each panel is compared with the
    baseline's archs scored at its resolution instead (paired, like the slots); a slow
    metric (timing, ImageNet) is not scored again: its panel uses the baseline archs that
    were drawn at that resolution."""
    whole = float(base[f"{metric}_mean"])
    if len(panels) < 2 or samples is None:
        return {k: whole for k in panels}, {}
    rand = samples[samples["group"] == 0]
    m = ctx.metrics[metric]
    means, notes = {}, {}
    for k in panels:
        if k == "any":
            means[k], notes[k] = whole, "vs the random baseline"
        elif not m.slow:
            archs = [ctx.space.parse(t, int(k)) for t in rand["arch"]]
            means[k] = float(np.mean(m.evaluate(archs)))
            notes[k] = f"vs the {len(archs)} baseline archs at {k} px"
        else:
            at = rand.loc[rand["resolution"] == int(k), metric]
            means[k] = float(at.mean()) if len(at) else whole
            notes[k] = (f"vs the {len(at)} baseline archs drawn at {k} px" if len(at)
                        else "vs the whole baseline (none drawn at this resolution)")
    return means, notes


def _heatmaps(ctx, tracker, summary: pd.DataFrame, metric_names, samples: pd.DataFrame | None = None) -> None:
    """Mean value and mean difference from the baseline, per metric, for single-slot groups.
    Blocks are named by their tokens (`mbconv3_e6_k7`); in difference maps red is worse."""
    single = summary[(summary["block"] != BASELINE) & summary["unit"].notna() & ~summary["block"].str.contains(r"\+")]
    if single.empty:
        return
    base = summary[summary["block"] == BASELINE].iloc[0]
    res = single["resolution"]
    panel_of = np.where(res.isna(), "any", res.fillna(0).astype(np.int64).astype(str))
    panels = sorted(set(panel_of.tolist()))
    for m in metric_names:
        metric = ctx.metrics[m]
        unit, name = metric.unit, plots.metric_label(ctx.cfg, m)
        # a difference of percentages is in percentage points
        diff_unit = "pp" if unit == "%" else unit
        means, notes = _baselines(ctx, samples, base, m, panels)
        view = single.assign(diff=single[f"{m}_mean"].to_numpy() - np.array([means[k] for k in panel_of]))
        ends = _ENDS.get(m, ("lower", "higher"))
        for col, suffix, label, div in ((f"{m}_mean", "mean", f"mean {name} [{unit}]", False),
                                        ("diff", "diff", f"{name} \u2212 baseline [{diff_unit}]", True)):
            if div and not np.isfinite(view[col]).any():
                continue
            title = f"{ctx.space.name} on {ctx.cfg.device.name}: {label}, {int(base['n'])} archs per block"
            fig = plots.block_heatmaps(view, col, title, label, diverging=div and math.isfinite(view[col].abs().max()),
                                       higher_is_better=metric.higher_is_better, ends=ends if div else None,
                                       panel_notes=notes if div else None)
            name_png = f"heatmap_{m}_{suffix}.png"
            # fixed layout: saved as drawn (the tracker's tight-bbox save would draw it twice)
            tracker.log_artifact(atomic_write(tracker.run_dir / name_png, lambda p: plots.save_png(fig, p)))
            plots.close(fig)


class ProfileTask(Task):
    """Profile every configured slot against a random baseline."""
    groups = ("space", "device", "metric")

    def validate(self, ctx) -> None:
        validate(ctx)

    def run(self, ctx, tracker):
        return run(ctx, tracker)
