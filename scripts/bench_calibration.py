"""Benchmark: are calibrated profiles repeatable, and do they agree with direct timing?

    BLOCKPROF_ASSET_MIRROR=../shared/assets nice -n 5 python scripts/bench_calibration.py \
        [--device local_cpu] [--slots 20] [--archs 20] [--calib-seeds 1 2] [--truth-repeats 30]

Two fresh calibrations of the same device on this machine (`device.latency.calib_seed`:
different calibration archs, each in its own folder), each followed by a calibrated
profile (`task=profile device.latency.source=calibrated`) of the same seeded slots (default
20 of mbv3's 180, `--archs` archs each, plus the random baseline; the profile seed is the
same, so both profiles score the same archs). Then the slow ground truth: a direct measured
profile of the same archs with many timed rounds (`source=measured`, `--truth-repeats`).

Reported: Spearman of the slot means between the two calibrated profiles, their median
absolute relative difference, Spearman of the difference-from-baseline maps (slot mean /
baseline mean - 1), and Spearman of each calibrated profile's slot means against the ground
truth; the wall time of each step. Targets: slot-mean Spearman >= 0.95, median difference
<= 5 %, difference maps rho >= 0.9, rho against the ground truth >= 0.9.
Needs an idle machine: under load the timings (calibration and ground truth) are noise.
Writes scripts/results/bench_calibration_<device>.md and the per-arch values as CSV.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from bench_timing import pick_slots  # the same seeded slots as the timing benchmark
from blockprof.core.registry import build_space

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
logger = logging.getLogger("bench_calibration")


def profile(specs, args, out: Path, extra: list[str]) -> tuple[pd.DataFrame, float]:
    """One profile through the app: its samples.csv and wall seconds."""
    cmd = [sys.executable, str(REPO / "run.py"), "task=profile", "space=mbv3", f"device={args.device}",
           "metric.names=[latency]", f"task.num_archs={args.archs}", "task.all=false",
           f"task.blocks={json.dumps(specs)}", f"seed={args.seed}", "tracking=none",
           f"paths.output_root={out}", f"hydra.run.dir={out / 'run'}", *extra]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"profile failed ({' '.join(extra)}):\n{r.stderr[-3000:]}")
    return pd.read_csv(out / "run" / "samples.csv"), time.time() - t0


def slot_means(df: pd.DataFrame) -> tuple[pd.Series, float]:
    """Mean latency per slot (the random baseline apart) and the baseline's mean."""
    is_base = df["slot"].astype(str) == "random"
    return df[~is_base].groupby("slot", sort=True)["latency"].mean(), float(df[is_base]["latency"].mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="local_cpu")
    ap.add_argument("--slots", type=int, default=20)
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="the slots' and the profiles' seed")
    ap.add_argument("--calib-seeds", type=int, nargs=2, default=[1, 2])
    ap.add_argument("--calib-archs", type=int, default=None, help="device.latency.calib_archs (default: the device's)")
    ap.add_argument("--truth-repeats", type=int, default=30, help="timed rounds of the direct ground-truth profile")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every run (e.g. smoke sizes)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    space = build_space("mbv3")
    specs = pick_slots(space, args.slots, args.seed)
    load0 = os.getloadavg()
    runs, seconds = {}, {}
    size = [f"device.latency.calib_archs={args.calib_archs}"] if args.calib_archs else []
    with tempfile.TemporaryDirectory() as tmp:
        for cs in args.calib_seeds:
            name = f"calibrated_s{cs}"
            extra = ["device.latency.source=calibrated", f"device.latency.calib_seed={cs}",
                     f"device.latency.calib_dir={Path(tmp) / name / 'calibration'}", *size, *args.set]
            runs[name], seconds[name] = profile(specs, args, Path(tmp) / name, extra)
            logger.info("%s: calibration + profile %.0f s", name, seconds[name])
            again = f"{name}_reused"  # the same again: calibration reused, a short reference re-timing
            runs[again], seconds[again] = profile(specs, args, Path(tmp) / again, extra)
            logger.info("%s: profile %.0f s", again, seconds[again])
        truth = ["device.latency.source=measured", f"device.latency.repeats={args.truth_repeats}", *args.set]
        runs["measured"], seconds["measured"] = profile(specs, args, Path(tmp) / "measured", truth)
        logger.info("direct measured profile: %.0f s", seconds["measured"])
    load1 = os.getloadavg()
    first = runs[f"calibrated_s{args.calib_seeds[0]}"]
    for df in runs.values():
        assert list(df["arch"]) == list(first["arch"]), "the profiles scored different archs"

    means = {k: slot_means(v) for k, v in runs.items()}
    a, b = (f"calibrated_s{s}" for s in args.calib_seeds)
    (ma, ba), (mb, bb), (mt, bt) = means[a], means[b], means["measured"]
    diff_a, diff_b = ma / ba - 1, mb / bb - 1
    res = {"slot_rho": float(spearmanr(ma, mb)[0]),
           "slot_med_abs_diff_pct": float(np.median(np.abs(mb - ma) / ma) * 100),
           "diff_map_rho": float(spearmanr(diff_a, diff_b)[0]),
           "rho_vs_truth_a": float(spearmanr(ma, mt)[0]), "rho_vs_truth_b": float(spearmanr(mb, mt)[0]),
           "median_ratio_to_truth_a": float(np.median(ma / mt)), "median_ratio_to_truth_b": float(np.median(mb / mt))}
    targets = {"slot_rho": (0.95, ">="), "slot_med_abs_diff_pct": (5.0, "<="), "diff_map_rho": (0.9, ">="),
               "rho_vs_truth_a": (0.9, ">="), "rho_vs_truth_b": (0.9, ">=")}
    lines = ["| figure | value | target |", "|---|---|---|"]
    for k, v in res.items():
        t = targets.get(k)
        verdict = "" if t is None else (f"{t[1]} {t[0]:g}: " + ("met" if (v >= t[0] if t[1] == ">=" else v <= t[0])
                                                                 else "missed"))
        lines.append(f"| {k} | {v:.3f} | {verdict} |")
    lines += ["", "| step | wall s |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    text = ("\n".join(lines) + f"\n\n{args.device}, mbv3, {args.slots} seeded slots x {args.archs} archs (+ baseline); "
            f"calibration seeds {args.calib_seeds}; ground truth {args.truth_repeats} rounds; load average "
            f"{load0[0]:.1f} -> {load1[0]:.1f}; extra overrides {args.set or 'none'}\n")
    print(text)
    out = args.out or RESULTS / f"bench_calibration_{args.device}"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"slot": first["slot"], "arch": first["arch"], "resolution": first["resolution"],
                  **{k: v["latency"].to_numpy() for k, v in runs.items()}}).to_csv(out.with_suffix(".csv"), index=False)
    cmd = "python scripts/bench_calibration.py " + " ".join(sys.argv[1:])
    out.with_suffix(".md").write_text(f"`{cmd.strip()}`\n\n{text}")


if __name__ == "__main__":
    main()
