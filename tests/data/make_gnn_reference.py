"""Writes gnn_reference.pt: two GNN latency predictors trained on Note10 lookup-table
latency (1 and 2 message-passing rounds), 256 fixed archs, and their predictions by the
forward as it was before the packed-chain rewrite (dense batched adjacency, `bmm`),
which is kept below. tests/test_predictors.py checks that today's forward matches.

    BLOCKPROF_ASSET_MIRROR=../shared/assets python tests/data/make_gnn_reference.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blockprof.core.registry import build_space
from blockprof.metrics.lut import note10_latency
from blockprof.predictors.features import OpGraphFeaturizer
from blockprof.predictors.train import TrainOptions, fit_model, split_indices

OUT = Path(__file__).with_name("gnn_reference.pt")


def dense_forward(net, g) -> torch.Tensor:
    """The previous GNN forward: padded nodes, dense [n, N, N] adjacency, baddbmm."""
    F = torch.nn.functional
    ids, table = g.node_ids, g.table
    emb = net.act(net.inp(table))
    fwd, bwd = g.adjacency()
    z = F.embedding(ids, net.head_h(emb) + net.head_x(table))
    h = d = acc = None
    for i, (ws, wf, wb) in enumerate(zip(net.self_w, net.fwd_w, net.bwd_w)):
        if i == 0:
            s, f, b = (F.embedding(ids, w(emb)) for w in (ws, wf, wb))
        else:
            h = (F.embedding(ids, emb) if h is None else h) + d
            s, f, b = ws(h), wf(h), wb(h)
        d = F.silu(torch.baddbmm(torch.baddbmm(s, fwd, f), bwd, b))
        acc = d if acc is None else acc + d
    z = F.silu(z + acc @ net.head_h.weight.t())
    pooled = torch.bmm(g.mask.to(z.dtype).unsqueeze(1), z).squeeze(1)
    return pooled @ net.out.weight[0] + net.out.bias[0] * g.lengths.to(z.dtype)


def main() -> None:
    torch.manual_seed(0)
    space = build_space("mbv3")
    feat = OpGraphFeaturizer(space)
    rng = np.random.default_rng(0)
    archs = space.sample(rng, 1500)
    y = note10_latency(space).evaluate(archs)
    tr, dv, _ = split_indices(len(archs), rng)
    test_archs = space.sample(np.random.default_rng(7), 256)
    g = feat(test_archs)
    models = {}
    for layers in (1, 2):
        opts = TrainOptions(model="gnn", layers=layers, max_epochs=60, patience=60)
        model, _ = fit_model(space, opts, ([archs[i] for i in tr], y[tr]), ([archs[i] for i in dv], y[dv]),
                             seed=0, featurizer=feat)
        with torch.no_grad():
            before = dense_forward(model.net.eval(), g).double() * model.scale
        models[str(layers)] = {"hparams": {"hidden": 32, "layers": layers}, "state": model.state(),
                               "before": before}
    torch.save({"space": "mbv3", "archs": [a.text for a in test_archs],
                "resolutions": [int(a.resolution) for a in test_archs], "models": models}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
