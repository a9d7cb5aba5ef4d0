"""Benchmark: few-shot latency predictors for a new device (engine), from scratch vs
fine-tuned from another engine's predictor, against the full-data model and each
engine's own test-retest floor.

    BLOCKPROF_ASSET_MIRROR=../shared/assets nice -n 5 python scripts/bench_fewshot.py \
        [--data-dir scripts/data] [--ks 25 50 100 200] [--seeds 0 1 2]

Data: the committed `task=measure` datasets (scripts/data/ofa_mbv3_<engine>_lat_data.csv.gz,
the same seeded archs timed on PyTorch eager, ONNX Runtime and OpenVINO, each with its
meta.json holding the test-retest noise of a separate re-timing pass). Nothing is re-measured.

Per seed: a test set (20 % of the archs) is held out; the rest is the pool.
* full: a GNN trained on the whole pool of the target engine (90 % train / 10 % dev).
* scratch-k: a GNN trained on k archs of the pool (80 % train / 20 % dev).
* scale-k: the source engine's full-pool GNN, only rescaled to the k archs (no training).
* transfer-k: the source engine's full-pool GNN fine-tuned on the same k archs
  (`task.init_from` in task=train_predictor does the same).
Each k-arch set is picked two ways (`--select`): `random` (a seeded sample of the pool) and
`chosen` (blockprof.predictors.selection: greedy k-centre over the pool in a per-slot MACs
embedding, plus the source predictor's estimate as one coordinate so the set also spans
the predicted latency range); scratch and transfer are trained on both.
The source model never sees the target's test archs on any engine (it is trained on the
pool). Reported: test MAPE, Spearman, share within +-10 %, medians over the seeds, and
MAPE ratios to the full-data model and to the engine's test-retest MAPE (the floor).
Targets: full-data GNN MAPE <= 1.25x the floor; transfer-100 MAPE <= 1.2x full-data
(random archs) and <= 1.1x (chosen archs).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(ROOT))

from blockprof.core.latency_csv import read_latency_csv  # noqa: E402
from blockprof.core.registry import build_space  # noqa: E402
from blockprof.predictors.features import OpGraphFeaturizer  # noqa: E402
from blockprof.predictors.report import fidelity  # noqa: E402
from blockprof.predictors.selection import choose  # noqa: E402
from blockprof.predictors.train import TrainOptions, fit_model  # noqa: E402

logger = logging.getLogger("bench_fewshot")
ENGINES = ("local_cpu", "ort_cpu", "openvino_cpu")
SOURCE = {"ort_cpu": "local_cpu", "openvino_cpu": "local_cpu", "local_cpu": "ort_cpu"}


def load(data_dir: Path, space, engines):
    """Latency per engine, on the archs every engine measured (aligned by net_id)."""
    recs, floors = {}, {}
    for e in engines:
        path = data_dir / f"ofa_mbv3_{e}_lat_data.csv.gz"
        recs[e] = {r.net_id: r for r in read_latency_csv(path, space)}
        meta = json.loads((path.with_name(path.name + ".meta.json")).read_text())
        floors[e] = float(meta["retest"]["retest_mape"])
    ids = sorted(set.intersection(*(set(r) for r in recs.values())))
    for e in engines:
        assert all(recs[e][i].arch == recs[engines[0]][i].arch for i in ids), "engines timed different archs"
    archs = [recs[engines[0]][i].arch for i in ids]
    y = {e: np.array([recs[e][i].latency_ms for i in ids]) for e in engines}
    return archs, y, floors


def scale_only(model, archs, y):
    """The source model rescaled by the geometric-mean ratio on the k archs (no training)."""
    import copy
    m = copy.copy(model)
    m.scale = float(model.scale * np.exp(np.mean(np.log(y / model.predict(archs)))))
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=ROOT / "scripts" / "data")
    ap.add_argument("--ks", type=int, nargs="+", default=[25, 50, 100, 200])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", nargs="+", default=["ort_cpu", "openvino_cpu", "local_cpu"])
    ap.add_argument("--source", choices=ENGINES, help="the engine to transfer from (default: local_cpu, "
                    "or ort_cpu for target local_cpu)")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--ft-lr", type=float, default=2e-3, help="learning rate when fine-tuning (default: "
                    "the from-scratch rate)")
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "bench_fewshot")
    ap.add_argument("--select", nargs="+", default=["random", "chosen"], choices=["random", "chosen"],
                    help="how the k archs are picked from the pool")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    space = build_space("mbv3")
    if args.source:
        SOURCE.update({t: args.source for t in args.targets})
    if any(SOURCE[t] == t for t in args.targets):
        raise SystemExit("a target cannot be its own source")
    engines = sorted(set(args.targets) | {SOURCE[t] for t in args.targets}, key=ENGINES.index)
    archs, y, floors = load(args.data_dir, space, engines)
    feat = OpGraphFeaturizer(space)
    n = len(archs)
    logger.info("%d archs on %s; test-retest floors %s", n, engines, floors)
    opts = TrainOptions(model="gnn", max_epochs=args.max_epochs)
    ft = TrainOptions(model="gnn", max_epochs=args.max_epochs, lr=args.ft_lr)
    pick = lambda idx: [archs[i] for i in idx]  # noqa: E731
    rows = []
    t_start = time.time()
    for seed in args.seeds:
        rng = np.random.default_rng([seed, 21])
        perm = rng.permutation(n)
        test, pool = np.sort(perm[:n // 5]), perm[n // 5:]
        n_dev = max(1, len(pool) // 10)
        full_tr, full_dev = np.sort(pool[n_dev:]), np.sort(pool[:n_dev])
        full = {}
        for e in sorted(set(args.targets) | {SOURCE[t] for t in args.targets}):
            t0 = time.time()
            full[e], _ = fit_model(space, opts, (pick(full_tr), y[e][full_tr]), (pick(full_dev), y[e][full_dev]),
                                   seed=seed, featurizer=feat)
            f = fidelity(y[e][test], full[e].predict(pick(test)))
            rows.append({"target": e, "source": "-", "k": len(full_tr) + len(full_dev), "method": "full",
                         "select": "-", "seed": seed, **f, "seconds": time.time() - t0})
            logger.info("seed %d %s full: MAPE %.2f (floor %.2f)", seed, e, f["mape"], floors[e])
        for tgt in args.targets:
            src = SOURCE[tgt]
            pool_pred = full[src].predict(pick(pool))  # what the transferred predictor expects, pool-wide
            for k, sel in ((k, sel) for k in args.ks for sel in args.select):
                if sel == "random":
                    sub = np.random.default_rng([seed, 22, k]).choice(pool, size=k, replace=False)
                else:  # chosen: the dev part is a seeded shuffle of the chosen set
                    sub = np.random.default_rng([seed, 23, k]).permutation(
                        pool[choose(space, pick(pool), k, seed=seed, predicted_ms=pool_pred)])
                k_dev = max(2, int(round(0.2 * k)))
                tr, dv = np.sort(sub[k_dev:]), np.sort(sub[:k_dev])
                train, dev = (pick(tr), y[tgt][tr]), (pick(dv), y[tgt][dv])
                methods = ("scratch", "scale", "transfer") if sel == "random" else ("scratch", "transfer")
                for method in methods:
                    t0 = time.time()
                    if method == "scratch":
                        m, _ = fit_model(space, opts, train, dev, seed=seed, featurizer=feat)
                    elif method == "scale":
                        m = scale_only(full[src], pick(sub), y[tgt][sub])
                    else:
                        m, _ = fit_model(space, ft, train, dev, seed=seed, featurizer=feat, init=full[src])
                    f = fidelity(y[tgt][test], m.predict(pick(test)))
                    rows.append({"target": tgt, "source": src if method != "scratch" else "-", "k": k,
                                 "method": method, "select": sel, "seed": seed, **f, "seconds": time.time() - t0})
                logger.info("seed %d %s k=%d %s: %s", seed, tgt, k, sel,
                            ", ".join(f"{m} {r['mape']:.2f}" for m, r in zip(methods, rows[-len(methods):])))
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.4f")

    med = df.groupby(["target", "method", "select", "k", "source"], sort=False).agg(
        mape=("mape", "median"), spearman=("spearman", "median"), within10=("within10", "median"),
        mape_min=("mape", "min"), mape_max=("mape", "max"), seconds=("seconds", "median")).reset_index()
    lines = ["| target | method | archs | source | k archs | MAPE % (min-max) | Spearman | within +-10 % | "
             "MAPE / full | MAPE / floor |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdict = []
    for tgt in args.targets:
        part = med[med["target"] == tgt]
        full_mape = float(part[part["method"] == "full"]["mape"].iloc[0])
        order = [("full", None, "-")] + [(m, k, sel) for k in args.ks for sel in args.select
                                          for m in (("scratch", "scale", "transfer") if sel == "random"
                                                    else ("scratch", "transfer"))]
        for m, k, sel in order:
            r = part[(part["method"] == m) & (part["select"] == sel)
                     & ((part["k"] == k) if k is not None else True)].iloc[0]
            lines.append(f"| {tgt} | {m} | {sel} | {r.source} | {int(r.k)} | {r.mape:.2f} ({r.mape_min:.2f}-{r.mape_max:.2f}) | "
                         f"{r.spearman:.3f} | {r.within10:.1f} | {r.mape / full_mape:.2f}x | "
                         f"{r.mape / floors[tgt]:.2f}x |")
        t100 = part[(part["method"] == "transfer") & (part["k"] == 100) & (part["select"] == "random")]
        c100 = part[(part["method"] == "transfer") & (part["k"] == 100) & (part["select"] == "chosen")]
        verdict.append(f"{tgt}: test-retest floor {floors[tgt]:.2f} % MAPE; full-data GNN {full_mape:.2f} % = "
                       f"{full_mape / floors[tgt]:.2f}x floor (target <= 1.25x: "
                       f"{'met' if full_mape <= 1.25 * floors[tgt] else 'missed'})"
                       + (f"; transfer k=100 {float(t100['mape'].iloc[0]):.2f} % = "
                          f"{float(t100['mape'].iloc[0]) / full_mape:.2f}x full (target <= 1.2x: "
                          f"{'met' if float(t100['mape'].iloc[0]) <= 1.2 * full_mape else 'missed'})"
                          if len(t100) else "")
                       + (f"; transfer k=100 chosen {float(c100['mape'].iloc[0]):.2f} % = "
                          f"{float(c100['mape'].iloc[0]) / full_mape:.2f}x full (target <= 1.1x: "
                          f"{'met' if float(c100['mape'].iloc[0]) <= 1.1 * full_mape else 'missed'})"
                          if len(c100) else ""))
    text = ("\n".join(lines) + "\n\n" + "\n".join(f"- {v}" for v in verdict) +
            f"\n\n{n} archs per engine, test set {n // 5}, seeds {args.seeds}, medians over seeds; "
            f"fine-tune lr {args.ft_lr}; {time.time() - t_start:.0f} s\n")
    print(text)
    cmd = "python scripts/bench_fewshot.py " + " ".join(sys.argv[1:])
    args.out.with_suffix(".md").write_text(f"`{cmd.strip()}`\n\n{text}")


if __name__ == "__main__":
    main()
