"""Benchmark: the default `all` block profile of mbv3 end to end, against the previous code, same run.

    BLOCKPROF_ASSET_MIRROR=../shared/assets python scripts/bench_profile.py [--archs 100] [--repeats 3]

The command measured is `python run.py task.num_archs=100 tracking=none` (mbv3, Note10
lookup table, OFA accuracy predictor, MMACs, params: 180 slots x 100 archs + the random
baseline), run in this process after start-up (imports, config composition) so that
the seconds are the task's work. Rows, medians of --repeats:

* the seed's per-arch loop (every metric one arch at a time), on a subsample, extrapolated;
* the batched core (sample, force, score, summarise);
* the 8 heatmaps and the 3 CSV tables on their own, previous code vs now (the previous
  code - one `Text` per cell, tight layout, tight-bbox save; pandas `to_csv` - is kept
  below as the baseline);
* the task end to end with the previous drawing / CSV code patched in, and as it is now.

Every row shows wall seconds and this process's CPU seconds: on a quiet machine the two
agree; when other jobs share the cores, wall time grows and CPU time shows the work.
Target: the task end to end <= 5 s of work (wall) after start-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(ROOT))

from blockprof.app import profiling  # noqa: E402
from blockprof.app.compose import compose  # noqa: E402
from blockprof.app.main import execute  # noqa: E402
from blockprof.app.profiling import base_archs, group_archs, make_groups, samples_frame, summarise  # noqa: E402
from blockprof.app.tasks import profile as profile_task  # noqa: E402
from blockprof.common.fileio import write_csv  # noqa: E402
from blockprof.core.registry import build_space  # noqa: E402
from blockprof.infra import plots  # noqa: E402
from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor  # noqa: E402
from blockprof.metrics.analytic import mmacs_metric, params_metric  # noqa: E402
from blockprof.metrics.base import score  # noqa: E402
from blockprof.metrics.lut import note10_latency  # noqa: E402

TARGET_S = 5.0


# ------------------------------------------------------------- the previous code (baseline)
def previous_block_heatmaps(summary: pd.DataFrame, value_col: str, title: str, cbar_label: str,
                            diverging: bool = False, dpi=None):
    """The heatmap code before the rewrite: one Text artist per cell, tight_layout."""
    import matplotlib.pyplot as plt

    df = summary.copy()
    df["res_key"] = df["resolution"].apply(lambda r: "any" if pd.isna(r) else str(int(r)))
    panels = sorted(df["res_key"].unique(), key=lambda k: (k != "any", k))
    blocks = list(dict.fromkeys(df["block"]))
    rows = sorted({(int(u), int(l)) for u, l in zip(df["unit"], df["layer"])})
    row_index = {r: i for i, r in enumerate(rows)}
    col_index = {b: i for i, b in enumerate(blocks)}
    vmax = float(np.nanmax(np.abs(df[value_col]))) if diverging else None
    fig, axes = plt.subplots(1, len(panels), figsize=(1.0 + 0.75 * len(blocks) * len(panels), 1.2 + 0.32 * len(rows)),
                             squeeze=False)
    for ax, key in zip(axes[0], panels):
        grid = np.full((len(rows), len(blocks)), np.nan)
        for _, r in df[df["res_key"] == key].iterrows():
            grid[row_index[(int(r["unit"]), int(r["layer"]))], col_index[r["block"]]] = r[value_col]
        kw = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax) if diverging else dict(cmap="viridis")
        im = ax.imshow(grid, aspect="auto", **kw)
        ax.set_xticks(range(len(blocks)))
        ax.set_xticklabels([b.replace("mbconv", "MB").replace("bneck_", "") for b in blocks], rotation=60,
                           ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"U{u} L{l}" for u, l in rows], fontsize=7)
        ax.set_title(f"resolution {key}" if key != "any" else "resolution sampled", fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=5,
                        color="white" if not diverging else "black")
        fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.05)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def previous_save_png(fig, path) -> None:
    fig.savefig(path, format="png", bbox_inches="tight")  # what `tracker.log_figure` does


def previous_write_csv(df, path) -> None:
    df.to_csv(path, index=False)


@contextmanager
def previous_code():
    """Patch the previous heatmap and CSV code into the task (restored on exit)."""
    saved = (plots.block_heatmaps, plots.save_png, profile_task.write_csv, profiling.write_csv)
    plots.block_heatmaps, plots.save_png = previous_block_heatmaps, previous_save_png
    profile_task.write_csv = profiling.write_csv = previous_write_csv
    try:
        yield
    finally:
        plots.block_heatmaps, plots.save_png, profile_task.write_csv, profiling.write_csv = saved


# ------------------------------------------------------------- timed pieces
def core(space, metrics, n, seed=0):
    groups = make_groups(space, True, [], None)
    base = base_archs(space, seed, n)
    archs = [group_archs(space, g, base, seed) for g in groups]
    flat = [a for grp in archs for a in grp]
    df = samples_frame(space, groups, archs, score(metrics, flat))
    summary, extremes = summarise(space, groups, df, list(metrics), {k: m.higher_is_better for k, m in metrics.items()})
    return len(flat), df, summary, extremes


def heatmap_views(summary: pd.DataFrame, metric_names):
    """The 8 (frame, column, diverging) the task draws: mean and difference from the baseline."""
    single = summary[(summary["block"] != "random") & summary["unit"].notna() & ~summary["block"].str.contains(r"\+")]
    base = summary[summary["block"] == "random"].iloc[0]
    for m in metric_names:
        view = single.assign(diff=single[f"{m}_mean"] - base[f"{m}_mean"])
        yield m, "mean", view, f"{m}_mean", False
        yield m, "diff", view, "diff", True


def draw_all(summary, metric_names, out: Path, draw, save) -> None:
    import matplotlib.pyplot as plt

    for m, suffix, view, col, div in heatmap_views(summary, metric_names):
        fig = draw(view, col, f"mbv3 on note10: {m} {suffix}", f"{m} {suffix}", diverging=div)
        save(fig, out / f"heatmap_{m}_{suffix}.png")
        plt.close(fig)


def end_to_end(n: int) -> tuple[float, float]:
    """(wall, CPU) seconds of `python run.py task.num_archs=n tracking=none` after start-up."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([f"task.num_archs={n}", "tracking=none", f"paths.output_root={tmp}"])
        t0, c0 = time.perf_counter(), time.process_time()
        execute(cfg, run_dir=Path(tmp) / "run")
        return time.perf_counter() - t0, time.process_time() - c0


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU of this process) seconds of fn()."""
    ts, cs = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return statistics.median(ts), statistics.median(cs)


def medians(pairs) -> tuple[float, float]:
    pairs = list(pairs)
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-sample", type=int, default=300)
    ap.add_argument("--keep", type=Path, default=None, help="also write both sets of heatmaps here (to look at)")
    args = ap.parse_args(argv)
    import os
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}", flush=True)

    space = build_space("mbv3")
    metrics = {"accuracy": OFAAccuracyPredictor(space), "mmacs": mmacs_metric(space),
               "params_m": params_metric(space), "latency": note10_latency(space)}
    names = list(metrics)
    total, samples, summary, extremes = core(space, metrics, args.archs)  # warm-up (and the data for the pieces)
    batched = median_time(lambda: core(space, metrics, args.archs), args.repeats)

    sample = space.sample(np.random.default_rng(1), args.loop_sample)

    def loop():
        for a in sample:  # the seed's way: one arch at a time through every metric
            for m in metrics.values():
                m.evaluate([a])
    loop_wall, loop_cpu = median_time(loop, args.repeats)
    per_arch = loop_wall / len(sample)
    loop_total, loop_total_cpu = per_arch * total, loop_cpu / len(sample) * total

    with tempfile.TemporaryDirectory() as tmp:
        old_dir, new_dir = Path(args.keep or tmp) / "previous", Path(args.keep or tmp) / "now"
        old_dir.mkdir(parents=True, exist_ok=True)
        new_dir.mkdir(parents=True, exist_ok=True)
        heat_old = median_time(lambda: draw_all(summary, names, old_dir, previous_block_heatmaps, previous_save_png),
                               args.repeats)
        heat_new = median_time(lambda: draw_all(summary, names, new_dir, plots.block_heatmaps, plots.save_png),
                               args.repeats)
        tables = ((samples, "samples.csv"), (summary, "summary.csv"), (extremes, "extremes.csv"))
        csv_old = median_time(lambda: [previous_write_csv(df, Path(tmp) / n) for df, n in tables], args.repeats)
        csv_new = median_time(lambda: [write_csv(df, Path(tmp) / n) for df, n in tables], args.repeats)
        for df, n in tables:  # the fast writer loses nothing: both files read back equal
            write_csv(df, Path(tmp) / n)
            previous_write_csv(df, Path(tmp) / f"pandas_{n}")
            pd.testing.assert_frame_equal(pd.read_csv(Path(tmp) / n), pd.read_csv(Path(tmp) / f"pandas_{n}"))

    end_to_end(args.archs)  # warm-up: caches, lazy imports
    with previous_code():
        e2e_old = medians(end_to_end(args.archs) for _ in range(args.repeats))
    e2e = medians(end_to_end(args.archs) for _ in range(args.repeats))

    print(f"\nmbv3 `all`: 180 slots x {args.archs} archs + baseline = {total:,} archs, 4 metrics, "
          f"8 heatmaps, 3 CSV tables; median of {args.repeats}; load average after {os.getloadavg()}\n")
    def row(what, t, base, n=None):
        (w, c), (bw, _) = t, base
        rate = f"{n / w:,.0f}" if n else "-"
        ratio = "1.0x (baseline)" if t is base else f"{bw / w:,.1f}x"
        print(f"| {what} | {w:,.2f} | {c:,.2f} | {rate} | {ratio} |")

    print("| what | wall s | CPU s | archs/s (wall) | ratio vs baseline (wall) |")
    print("|---|---:|---:|---:|---:|")
    loop_t = (loop_total, loop_total_cpu)
    row(f"per-arch loop (seed's way; {len(sample)} archs, extrapolated)", loop_t, loop_t, total)
    row("batched core (sample, force, score, summarise) vs the loop", batched, loop_t, total)
    row("8 heatmaps, previous code (Text per cell, tight layout + bbox)", heat_old, heat_old)
    row("8 heatmaps, now (glyph-path text, fixed layout, no Axes)", heat_new, heat_old)
    row("3 CSV tables, pandas to_csv", csv_old, csv_old)
    row("3 CSV tables, now (Arrow writer)", csv_new, csv_old)
    row("task end to end, previous heatmap + CSV code", e2e_old, e2e_old, total)
    row("task end to end, now", e2e, e2e_old, total)
    print(f"\ntarget: `all` profile x {args.archs} archs end to end <= {TARGET_S:.0f} s after start-up -> "
          f"{'met' if e2e[0] <= TARGET_S else 'MISSED'} ({e2e[0]:.2f} s wall, {e2e[1]:.2f} s CPU; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
