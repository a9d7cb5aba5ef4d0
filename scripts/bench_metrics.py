"""Benchmark: batched blockprof metrics vs OFA's own per-arch implementations, same run.

    BLOCKPROF_ASSET_MIRROR=../shared/assets python scripts/bench_metrics.py [--archs 10000]

Prints archs/s (median of --repeats timings) and the ratio to OFA's way:
accuracy vs ofa.tutorial.AccuracyPredictor, Note10 latency vs OFA's LatencyEstimator
spec walk (per arch), analytic MMACs vs torchprofile on the real subnet (small sample).
Targets: accuracy >= 1x OFA, LUT >= 10x, MMACs >= 10,000x torchprofile.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import yaml

from blockprof.common.assets import resolve_asset
from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor
from blockprof.metrics.analytic import mmacs_metric, params_metric
from blockprof.metrics.lut import note10_latency
from blockprof.core.space import build_space


def rate(fn, n_items: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_items / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile-sample", type=int, default=10, help="archs for torchprofile (slow)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    space = build_space("mbv3")
    archs = space.sample(np.random.default_rng(0), args.archs)
    specs = [dict(space.to_ofa(a), r=[a.resolution]) for a in archs]

    from ofa.tutorial.accuracy_predictor import AccuracyPredictor
    from ofa.tutorial.latency_table import LatencyEstimator

    acc = OFAAccuracyPredictor(space)
    ofa_acc = AccuracyPredictor(pretrained=False, device="cpu")
    ofa_acc.model.load_state_dict(torch.load(resolve_asset("ofa/acc_predictor.pth"), map_location="cpu",
                                             weights_only=True))
    lut = note10_latency(space)
    estimators = {}
    for r in space.resolutions:
        est = LatencyEstimator.__new__(LatencyEstimator)  # OFA's own loader: yaml.load without Loader
        with open(resolve_asset(f"ofa/note10/{r}_lookup_table.yaml")) as f:
            est.lut = yaml.safe_load(f)
        estimators[r] = est
    macs, params = mmacs_metric(space), params_metric(space)

    def ofa_lut():
        for s in specs:
            estimators[s["r"][0]].predict_network_latency_given_spec(s)

    from torchprofile import profile_macs
    import warnings
    warnings.filterwarnings("ignore")
    sample = archs[: args.profile_sample]

    def torchprofile_loop():
        for a in sample:
            net = space.build_subnet(a)
            profile_macs(net, torch.zeros(1, 3, a.resolution, a.resolution))

    def numel_loop():
        for a in sample:
            sum(p.numel() for p in space.build_subnet(a).parameters())

    n = len(archs)
    rows = [
        ("accuracy (OFA predictor)", rate(lambda: acc.evaluate(archs), n, args.repeats),
         "ofa.tutorial AccuracyPredictor", rate(lambda: ofa_acc.predict_accuracy(specs), n, args.repeats), 1),
        ("latency (Note10 LUT)", rate(lambda: lut.evaluate(archs), n, args.repeats),
         "OFA LatencyEstimator per arch", rate(ofa_lut, n, max(1, args.repeats // 2)), 10),
        ("mmacs (analytic)", rate(lambda: macs.evaluate(archs), n, args.repeats),
         "torchprofile on subnet", rate(torchprofile_loop, len(sample), 1), 10_000),
        ("params_m (analytic)", rate(lambda: params.evaluate(archs), n, args.repeats),
         "subnet + sum(numel)", rate(numel_loop, len(sample), 1), None),
    ]
    print(f"\n{n} mbv3 archs, torch threads {torch.get_num_threads()}, median of {args.repeats} runs\n")
    print("| metric | blockprof archs/s | baseline | baseline archs/s | ratio | target |")
    print("|---|---:|---|---:|---:|---|")
    for name, ours, base_name, base, target in rows:
        ratio = ours / base
        tgt = "-" if target is None else (f">= {target:,}x " + ("met" if ratio >= target else "MISSED"))
        print(f"| {name} | {ours:,.0f} | {base_name} | {base:,.1f} | {ratio:,.1f}x | {tgt} |")


if __name__ == "__main__":
    main()
