"""Benchmark: batched blockprof metrics vs OFA's own per-arch implementations, same run.

    BLOCKPROF_ASSET_MIRROR=../shared/assets python scripts/bench_metrics.py [--archs 10000]

Prints archs/s (median of --repeats timings; ours and the baseline are timed in
alternation, so load drift hits both alike) and the ratio to the baseline:

- accuracy (mbv3, resnet50) vs OFA's own predictors (`ofa.tutorial.AccuracyPredictor`,
  `ofa.nas.accuracy_predictor` with its `ResNetArchEncoder`), with torch set to 1 and
  to 2 threads (the baselines use that setting; blockprof's predictor runs its MLP
  on one thread either way, its default),
- Note10 latency vs OFA's LatencyEstimator spec walk (per arch),
- `space.encode` vs a per-arch Python loop (the encoder it replaced, same output),
- analytic MMACs / params vs torchprofile / numel on the real subnet (small sample).

Targets: accuracy (mbv3) >= 5x OFA, LUT >= 10x, MMACs >= 10,000x torchprofile. The
resnet50 accuracy row has no target: OFA's ResNet encoder is a cheap numpy loop, so
both sides spend most of their time in the same MLP.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
import yaml

from blockprof.common.assets import resolve_asset
from blockprof.core.space import SlotEncoding
from blockprof.core.registry import build_space
from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor
from blockprof.metrics.analytic import mmacs_metric, params_metric
from blockprof.metrics.lut import note10_latency


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(ours, base, n_ours: int, n_base: int, repeats: int, base_repeats: int | None = None) -> tuple[float, float]:
    """archs/s of ours and of the baseline, each the median over runs taken in alternation."""
    ours(), base()  # warm-up: lazy tables, allocator, thread pools
    t_o, t_b = [], []
    for i in range(repeats):
        t_o.append(_timed(ours))
        if i < (base_repeats or repeats):
            t_b.append(_timed(base))
    return n_ours / statistics.median(t_o), n_base / statistics.median(t_b)


def loop_encode(space, archs, resnet: bool) -> SlotEncoding:
    """A per-arch, per-layer Python loop over the same encoding (the baseline for `encode`)."""
    n, S = len(archs), space.n_slot_positions
    choice = np.full((n, S), -1, dtype=np.int16)
    fixed = np.zeros(n, dtype=np.int16)
    res = np.empty(n, dtype=np.int16)
    r_index = {r: i for i, r in enumerate(space.resolutions)}
    for i, a in enumerate(archs):
        res[i] = r_index[a.resolution]
        if not resnet:
            for u, layers in enumerate(a.units):
                for j, t in enumerate(layers):
                    choice[i, space.slot_offsets[u] + j] = space.block_index[t]
            continue
        stem = a.units[0][0]
        choice[i, 0] = space.stem_index[stem]
        w_prev = space.stem(stem)[2]
        for u in range(1, 5):
            for j, t in enumerate(a.units[u]):
                e, w = space.bneck(t)
                choice[i, space.slot_offsets[u] + j] = space.expands.index(e) * 9 + (w_prev if j == 0 else w) * 3 + w
            w_prev = space.bneck(a.units[u][0])[1]
        fixed[i] = w_prev
    return SlotEncoding(choice, fixed, res)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile-sample", type=int, default=10, help="archs for torchprofile (slow)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    mb, rn = build_space("mbv3"), build_space("resnet50")
    archs, rn_archs = mb.sample(rng, args.archs), rn.sample(rng, args.archs)
    n = len(archs)
    specs = [dict(mb.to_ofa(a), r=[a.resolution]) for a in archs]
    rn_specs = []
    for a in rn_archs:
        d = rn.to_ofa(a)
        d["image_size"] = d.pop("r")
        rn_specs.append(d)

    from ofa.nas.accuracy_predictor import AccuracyPredictor as OFAResNetPredictor, ResNetArchEncoder
    from ofa.tutorial.accuracy_predictor import AccuracyPredictor
    from ofa.tutorial.latency_table import LatencyEstimator

    acc, rn_acc = OFAAccuracyPredictor(mb), OFAAccuracyPredictor(rn)
    ofa_acc = AccuracyPredictor(pretrained=False, device="cpu")
    ofa_acc.model.load_state_dict(torch.load(resolve_asset("ofa/acc_predictor.pth"), map_location="cpu",
                                             weights_only=True))
    rn_res = list(rn.capabilities.accuracy_predictor.resolutions)
    ofa_rn_acc = OFAResNetPredictor(ResNetArchEncoder(image_size_list=rn_res), 400, 3, device="cpu",
                                    checkpoint_path=str(resolve_asset("ofa/ofa_resnet50_acc_predictor.pth")))

    def ofa_rn():
        with torch.no_grad():
            ofa_rn_acc.predict_acc(rn_specs)

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows.append((f"accuracy mbv3 (OFA predictor), torch threads {threads}",
                     *paired(lambda: acc.evaluate(archs), lambda: ofa_acc.predict_accuracy(specs), n, n, args.repeats),
                     "ofa.tutorial AccuracyPredictor", 5))
        rows.append((f"accuracy resnet50 (OFA predictor), torch threads {threads}",
                     *paired(lambda: rn_acc.evaluate(rn_archs), ofa_rn, n, n, args.repeats),
                     "ofa.nas AccuracyPredictor + ResNetArchEncoder", None))
    torch.set_num_threads(2)

    lut = note10_latency(mb)
    estimators = {}
    for r in mb.resolutions:
        est = LatencyEstimator.__new__(LatencyEstimator)  # OFA's own loader: yaml.load without Loader
        with open(resolve_asset(f"ofa/note10/{r}_lookup_table.yaml")) as f:
            est.lut = yaml.safe_load(f)
        estimators[r] = est

    def ofa_lut():
        for s in specs:
            estimators[s["r"][0]].predict_network_latency_given_spec(s)

    rows.append(("latency mbv3 (Note10 LUT)", *paired(lambda: lut.evaluate(archs), ofa_lut, n, n, args.repeats,
                                                       max(1, args.repeats // 2)),
                 "OFA LatencyEstimator per arch", 10))
    for sp, aa, resnet in ((mb, archs, False), (rn, rn_archs, True)):
        rows.append((f"encode {sp.name} (vectorised)", *paired(lambda: sp.encode(aa), lambda: loop_encode(sp, aa, resnet),
                                                              n, n, args.repeats),
                     "per-arch Python loop", None))

    from torchprofile import profile_macs
    macs, params = mmacs_metric(mb), params_metric(mb)
    sample = archs[: args.profile_sample]

    def torchprofile_loop():
        for a in sample:
            profile_macs(mb.build_subnet(a), torch.zeros(1, 3, a.resolution, a.resolution))

    def numel_loop():
        for a in sample:
            sum(p.numel() for p in mb.build_subnet(a).parameters())

    rows.append(("mmacs mbv3 (analytic)", *paired(lambda: macs.evaluate(archs), torchprofile_loop, n, len(sample),
                                                  args.repeats, 1), "torchprofile on subnet", 10_000))
    rows.append(("params_m mbv3 (analytic)", *paired(lambda: params.evaluate(archs), numel_loop, n, len(sample),
                                                     args.repeats, 1), "subnet + sum(numel)", None))

    print(f"\n{n} archs per space, median of {args.repeats} alternating runs (baselines over a slow sample: 1 run)\n")
    print("| metric | blockprof archs/s | baseline | baseline archs/s | ratio | target |")
    print("|---|---:|---|---:|---:|---|")
    for name, ours, base, base_name, target in rows:
        ratio = ours / base
        tgt = "-" if target is None else (f">= {target:,}x " + ("met" if ratio >= target else "MISSED"))
        print(f"| {name} | {ours:,.0f} | {base_name} | {base:,.1f} | {ratio:,.1f}x | {tgt} |")


if __name__ == "__main__":
    main()
