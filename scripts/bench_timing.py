"""Benchmark: is a measured block profile repeatable? The shared timing protocol vs the
naive back-to-back wall-clock loop, both run twice in the same session.

    BLOCKPROF_ASSET_MIRROR=../shared/assets nice -n 5 python scripts/bench_timing.py \
        [--slots 20] [--archs 10] [--device local_cpu]

A seeded random set of slots (default 20 of mbv3's 180) with N archs each (plus the
random baseline) is profiled twice with `python run.py task=profile device=<device>
metric.names=[latency]`, i.e. through the measured-latency metric and its protocol
(the device's settings: fixed threads, CPU clock, interleaved rounds over chunks,
reference subnets per round, median; the profile hands the slots over arch-major, so a
timing chunk holds the variants of one base arch). The baseline is the loop the metric used before:
each subnet built, warmed up 3x and timed 10x back to back with the wall clock, median.
Both passes of both methods see the same archs.

Reported per method: Spearman rank correlation of the slot means between the two passes,
their median relative difference, and the single-arch test-retest (MAPE between the
passes, share of archs within +-10 %). Target: slot-mean rank correlation >= 0.9.
Writes scripts/results/bench_timing_<device>.md (and the raw per-arch values as CSV).
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
import torch
from scipy.stats import spearmanr

from blockprof.app.profiling import base_archs, group_archs, make_groups
from blockprof.core.registry import build_space

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
logger = logging.getLogger("bench_timing")


def pick_slots(space, k: int, seed: int) -> list[list[int]]:
    """k seeded slots as [unit, layer, kernel, expand] specs."""
    slots = space.slots()
    idx = np.random.default_rng([seed, 11]).choice(len(slots), size=k, replace=False)
    out = []
    for i in sorted(idx):
        s = slots[int(i)]
        e, kk = space.block_ek(s.block)
        out.append([s.unit, s.layer, kk, e])
    return out


def profile_pass(specs, n: int, device: str, seed: int, out: Path) -> pd.DataFrame:
    """One measured profile through the app; its samples.csv."""
    cmd = [sys.executable, str(REPO / "run.py"), "task=profile", "space=mbv3", f"device={device}",
           "device.latency.source=measured", "metric.names=[latency]", f"task.num_archs={n}", "task.all=false", f"task.blocks={json.dumps(specs)}",
           f"seed={seed}", "tracking=none", f"paths.output_root={out}", f"hydra.run.dir={out / 'run'}"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"profile failed:\n{r.stderr[-3000:]}")
    logger.info("protocol pass: %.0f s", time.time() - t0)
    return pd.read_csv(out / "run" / "samples.csv")


def naive_pass(space, groups, base, seed: int) -> np.ndarray:
    """The old metric: per arch, build, 3 warm-up runs, 10 timed back to back (wall clock), median."""
    torch.set_num_threads(1)
    vals = []
    t0 = time.time()
    for g in groups:
        for a in group_archs(space, g, base, seed):
            net = space.build_subnet(a)
            x = torch.randn(1, 3, a.resolution, a.resolution)
            with torch.inference_mode():
                for _ in range(3):
                    net(x)
                ts = []
                for _ in range(10):
                    t = time.perf_counter()
                    net(x)
                    ts.append((time.perf_counter() - t) * 1e3)
            vals.append(float(np.median(ts)))
    logger.info("naive pass: %.0f s", time.time() - t0)
    return np.array(vals)


def compare(v1: np.ndarray, v2: np.ndarray, n_groups: int) -> dict:
    m1, m2 = v1.reshape(n_groups, -1).mean(axis=1), v2.reshape(n_groups, -1).mean(axis=1)
    rel = np.abs(v2 - v1) / v1 * 100
    return {"slot_rho": float(spearmanr(m1, m2)[0]),
            "slot_med_rel_diff": float(np.median(np.abs(m2 - m1) / m1 * 100)),
            "arch_mape": float(rel.mean()), "arch_within10": float((rel <= 10).mean() * 100),
            "spread_of_slot_means": float((m1.max() - m1.min()) / np.median(m1) * 100)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=20)
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--device", default="local_cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true", help="skip the naive loop")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    space = build_space("mbv3")
    specs = pick_slots(space, args.slots, args.seed)
    groups = make_groups(space, False, specs, None)
    base = base_archs(space, args.seed, args.archs)
    rows, raw = [], {}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        passes = [profile_pass(specs, args.archs, args.device, args.seed, Path(tmp) / f"p{i}") for i in (1, 2)]
    for p in passes:  # same groups, same archs, same order
        assert list(p["arch"]) == list(passes[0]["arch"])
    v = [p["latency"].to_numpy(float) for p in passes]
    raw["protocol_1"], raw["protocol_2"] = v
    rows.append({"method": f"protocol ({args.device} device settings)", **compare(v[0], v[1], len(groups))})
    if not args.no_baseline and args.device == "local_cpu":
        n1 = naive_pass(space, groups, base, args.seed)
        n2 = naive_pass(space, groups, base, args.seed)
        raw["naive_1"], raw["naive_2"] = n1, n2
        rows.append({"method": "naive loop (wall clock, back to back)", **compare(n1, n2, len(groups))})
    load1 = os.getloadavg()

    df = pd.DataFrame(rows)
    base_rho = df["slot_rho"].iloc[-1]
    base_mape = df["arch_mape"].iloc[-1]
    df["rho_vs_naive"] = df["slot_rho"] / base_rho
    df["arch_mape_vs_naive"] = df["arch_mape"] / base_mape
    header = ("| method | slot-mean Spearman | slot-mean median rel. diff % | arch test-retest MAPE % "
              "| archs within +-10 % | spread of slot means % | rho vs naive | MAPE vs naive |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.method} | {r.slot_rho:.3f} | {r.slot_med_rel_diff:.2f} | {r.arch_mape:.2f} | "
                     f"{r.arch_within10:.1f} | {r.spread_of_slot_means:.1f} | {r.rho_vs_naive:.2f}x | "
                     f"{r.arch_mape_vs_naive:.2f}x |")
    note = (f"mbv3, {args.slots} seeded slots x {args.archs} archs (+ baseline) = {len(groups) * args.archs} "
            f"archs per pass, two passes per method; load average {load0[0]:.1f} -> {load1[0]:.1f}; "
            f"target slot-mean Spearman >= 0.9: {'met' if rows[0]['slot_rho'] >= 0.9 else 'missed'}")
    text = "\n".join(lines) + "\n\n" + note + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"bench_timing_{args.device}.md").write_text(
        f"`python scripts/bench_timing.py --slots {args.slots} --archs {args.archs} --device {args.device}`\n\n" + text)
    out = passes[0][["group", "slot", "arch", "resolution"]].copy()
    for k, vals in raw.items():
        out[k] = vals
    out.to_csv(RESULTS / f"bench_timing_{args.device}.csv.gz", index=False, float_format="%.4f")


if __name__ == "__main__":
    main()
