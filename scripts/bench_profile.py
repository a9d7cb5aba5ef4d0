"""Benchmark: the full `all` block profile of mbv3 vs the seed's per-arch loop, same run.

    BLOCKPROF_ASSET_MIRROR=../shared/assets python scripts/bench_profile.py [--archs 100]

Every slot of mbv3 (5 units x 4 layers x 9 blocks = 180) with N archs each plus the
random baseline, scored on accuracy (OFA predictor) + MMACs + params + Note10 latency.
Rows: the batched core (sample, force, score, summarise), the whole task end to end
(heatmaps and files, no MLflow), and the per-arch loop on a subsample, extrapolated.
Target: the full profile in under 30 s on 2 cores.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor
from blockprof.metrics.analytic import mmacs_metric, params_metric
from blockprof.metrics.lut import note10_latency
from blockprof.metrics.base import score
from blockprof.app.profiling import base_archs, group_archs, make_groups, samples_frame, summarise
from blockprof.core.space import build_space

REPO = Path(__file__).resolve().parents[1]


def core(space, metrics, n, seed=0):
    groups = make_groups(space, True, [], None)
    base = base_archs(space, seed, n)
    archs = [group_archs(space, g, base, seed) for g in groups]
    flat = [a for grp in archs for a in grp]
    df = samples_frame(space, groups, archs, score(metrics, flat))
    summarise(space, groups, df, list(metrics), {k: m.higher_is_better for k, m in metrics.items()})
    return len(flat)


def end_to_end(n):
    from hydra import compose, initialize_config_dir
    from blockprof.app.main import execute

    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"task.num_archs={n}", "tracking=none", f"paths.output_root={tmp}"])
        t0 = time.perf_counter()
        execute(cfg, run_dir=Path(tmp) / "run")
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-sample", type=int, default=300)
    args = ap.parse_args()
    space = build_space("mbv3")
    metrics = {"accuracy": OFAAccuracyPredictor(space), "mmacs": mmacs_metric(space),
               "params_m": params_metric(space), "latency": note10_latency(space)}

    times, total = [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        total = core(space, metrics, args.archs)
        times.append(time.perf_counter() - t0)
    batched = statistics.median(times)
    e2e = statistics.median(end_to_end(args.archs) for _ in range(args.repeats))

    sample = space.sample(np.random.default_rng(1), args.loop_sample)
    loop_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for a in sample:  # the seed's way: one arch at a time through every metric
            for m in metrics.values():
                m.evaluate([a])
        loop_times.append(time.perf_counter() - t0)
    per_arch = statistics.median(loop_times) / len(sample)
    loop_total = per_arch * total

    print(f"\nmbv3 `all`: 180 slots x {args.archs} archs + baseline = {total:,} archs, 4 metrics, "
          f"median of {args.repeats}\n")
    print("| way | seconds | archs/s | ratio vs per-arch loop |")
    print("|---|---:|---:|---:|")
    print(f"| per-arch loop (seed's way; {len(sample)} archs, extrapolated) | {loop_total:,.1f} | {1 / per_arch:,.0f} | 1.0x |")
    print(f"| blockprof batched core | {batched:,.2f} | {total / batched:,.0f} | {loop_total / batched:,.1f}x |")
    print(f"| blockprof task end to end (8 heatmaps, CSVs) | {e2e:,.2f} | {total / e2e:,.0f} | {loop_total / e2e:,.1f}x |")
    print(f"\ntarget: full profile < 30 s -> {'met' if e2e < 30 else 'MISSED'} ({e2e:.1f} s end to end)")


if __name__ == "__main__":
    main()
