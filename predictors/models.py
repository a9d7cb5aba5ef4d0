"""Latency models over one design space (issue 4).

* ``gnn`` (default): directed message passing over the op graph of
  `predictors.features`, dense batched adjacency in plain torch, read out as a
  sum of per-node latencies (end-to-end latency is close to a sum over layers;
  the messages let a node's cost depend on its neighbours).
* ``rnn``: the seed's baseline - a bidirectional GRU over the node sequence,
  each node embedded from its shape features; final states -> MLP.
* ``linear``: latency = a * MMACs + b (least squares).
* ``additive``: one cost per (resolution, unit-layer slot, block) plus one per
  resolution for stem/head, fitted by least squares on end-to-end latency
  (ridge-shrunk towards the linear-in-MACs fit, since a random sample of a
  few thousand archs leaves some of the ~900 costs barely observed).

Every model predicts milliseconds for a batch of archs and exports its
parameters as plain types + tensors (`state()`), so checkpoints load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch
from torch import nn

from blockprof.metrics.analytic import mmacs_metric
from blockprof.core.space import Arch, DesignSpace
from blockprof.predictors.features import GraphBatch, OpGraphFeaturizer

MODEL_KINDS = ("gnn", "rnn", "linear", "additive")


# ===================================================================== torch nets
class GNNNet(nn.Module):
    """Directed message passing over the op graph, dense batched adjacency (bmm).

    Each round a node's state h grows by act(W_s h + mean over producers of W_f h +
    mean over consumers of W_b h) (`GraphBatch.adjacency`). Read-out: the sum over
    nodes of a per-node latency w . act(W_h h + W_x x) + b.

    Everything that depends on a node's features only (its input embedding, the
    first round's three linear maps, the read-out's feature term) is computed once
    per distinct node of the featurizer's table and gathered in one go: the same
    maths as applying the layers to every node, at a fraction of the cost."""

    def __init__(self, in_dim: int, hidden: int = 32, layers: int = 2):
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.self_w = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.fwd_w = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(layers))
        self.bwd_w = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(layers))
        self.head_h = nn.Linear(hidden, hidden)
        self.head_x = nn.Linear(in_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)
        self.act = nn.SiLU()

    def init_readout(self, mean_nodes: float) -> None:
        """Start from the constant predictor (targets are scaled to mean 1): each node
        contributes 1/mean_nodes, and the per-node term starts small."""
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.fill_(1.0 / mean_nodes)

    def forward(self, g: GraphBatch) -> torch.Tensor:
        F = nn.functional
        ids, table = g.node_ids, g.table
        inplace = not torch.is_grad_enabled()          # inference: reuse buffers
        emb = self.act(self.inp(table))                # [K, H]: every distinct node once
        fwd, bwd = g.adjacency()                       # [n, N, N] each
        # h_L = h_0 + sum_i d_i, so the read-out's pre-activation W_h h_L + W_x x splits into
        # a per-node table (W_h h_0 + W_x x, gathered) and W_h (sum_i d_i)
        z = F.embedding(ids, self.head_h(emb) + self.head_x(table))
        h = d = acc = None  # h: node states, materialised only for rounds after the first
        for i, (ws, wf, wb) in enumerate(zip(self.self_w, self.fwd_w, self.bwd_w)):
            if i == 0:  # the first round's linear maps depend on the node only: gather them
                s, f, b = (F.embedding(ids, w(emb)) for w in (ws, wf, wb))
            else:
                h = (F.embedding(ids, emb) if h is None else h) + d
                s, f, b = ws(h), wf(h), wb(h)
            upd = s.baddbmm_(fwd, f) if inplace else torch.baddbmm(s, fwd, f)
            upd = upd.baddbmm_(bwd, b) if inplace else torch.baddbmm(upd, bwd, b)
            d = F.silu(upd, inplace=inplace)
            acc = d if acc is None else acc + d
        if acc is not None:
            z = torch.addmm(z.reshape(-1, z.shape[-1]), acc.reshape(-1, acc.shape[-1]),
                            self.head_h.weight.t()).reshape(z.shape)
        z = F.silu(z, inplace=inplace)
        # per-node latency w.z + b summed over valid nodes = w.(sum of z) + b * nodes;
        # padded nodes have no edges, so only this read-out needs the mask
        pooled = torch.bmm(g.mask.to(z.dtype).unsqueeze(1), z).squeeze(1)        # [n, H]
        return pooled @ self.out.weight[0] + self.out.bias[0] * g.lengths.to(z.dtype)


class RNNNet(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 64, layers: int = 1):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU())  # shape embedding
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, g: GraphBatch) -> torch.Tensor:
        e = self.embed(g.table)[g.node_ids]
        packed = nn.utils.rnn.pack_padded_sequence(e, g.lengths, batch_first=True, enforce_sorted=False)
        _, hn = self.gru(packed)
        return self.head(torch.cat([hn[-2], hn[-1]], dim=-1)).squeeze(-1)


NETS = {"gnn": GNNNet, "rnn": RNNNet}


# ===================================================================== models
class LatencyModel(ABC):
    kind: str

    def __init__(self, space: DesignSpace, hparams: dict | None = None):
        self.space = space
        self.hparams = dict(hparams or {})

    @abstractmethod
    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Latency (ms) of every arch, in one batch."""

    @abstractmethod
    def state(self) -> dict:
        """Learned parameters as plain types / tensors."""

    @abstractmethod
    def load_state(self, state: dict) -> None: ...


class TorchLatencyModel(LatencyModel):
    """A GNN or RNN net plus the target scale it was trained with (ms = net(x) * scale)."""

    DEFAULTS = {"gnn": {"hidden": 32, "layers": 1}, "rnn": {"hidden": 32, "layers": 1}}

    def __init__(self, space, kind: str, hparams: dict | None = None, featurizer: OpGraphFeaturizer | None = None):
        hp = {**self.DEFAULTS[kind], **(hparams or {})}
        super().__init__(space, hp)
        self.kind = kind
        self.featurizer = featurizer or OpGraphFeaturizer(space)
        self.net = NETS[kind](self.featurizer.dim, hidden=int(hp["hidden"]), layers=int(hp["layers"]))
        self.net.eval()
        self.scale = 1.0

    def net_kwargs(self) -> dict:
        return {"hidden": int(self.hparams["hidden"]), "layers": int(self.hparams["layers"])}

    @torch.inference_mode()
    def predict_graphs(self, g: GraphBatch, batch_size: int = 1024) -> np.ndarray:
        """Batched inference; graphs are grouped by node count so each batch pads little."""
        self.net.eval()
        n = len(g)
        if n == 0:
            return np.zeros(0)
        order = torch.argsort(g.lengths, stable=True)
        out = torch.empty(n, dtype=torch.float32)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            out[idx] = self.net(g.index(idx).trimmed())
        return out.double().numpy() * self.scale

    def predict(self, archs):
        return self.predict_graphs(self.featurizer(archs))

    def state(self):
        return {"scale": float(self.scale), "state_dict": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}

    def load_state(self, state):
        self.scale = float(state["scale"])
        self.net.load_state_dict(state["state_dict"])
        self.net.eval()


class LinearMACsModel(LatencyModel):
    kind = "linear"

    def __init__(self, space, hparams=None):
        super().__init__(space, hparams)
        self.macs = mmacs_metric(space)
        self.coef = np.zeros(2)

    def fit(self, archs, y):
        m = self.macs.evaluate(archs)
        X = np.stack([m, np.ones_like(m)], axis=1)
        self.coef = np.linalg.lstsq(X, y, rcond=None)[0]
        return self

    def predict(self, archs):
        return self.macs.evaluate(archs) * self.coef[0] + self.coef[1]

    def state(self):
        return {"coef": [float(c) for c in self.coef]}

    def load_state(self, state):
        self.coef = np.array(state["coef"], dtype=np.float64)


class AdditiveModel(LatencyModel):
    """latency = fixed[res] + sum over active slots of cost[res, slot, block]."""
    kind = "additive"

    def __init__(self, space, hparams=None):
        super().__init__(space, {"ridge": 1.0, **(hparams or {})})
        self.linear = LinearMACsModel(space)
        fixed_macs, slot_macs = space.cost_tables(lambda l, r: _macs(l))
        self.fixed_macs, self.slot_macs = fixed_macs * 1e-6, slot_macs * 1e-6
        R, S, C = slot_macs.shape
        self.fixed = np.zeros(fixed_macs.shape)
        self.cost = np.zeros((R, S, C))

    def _design(self, enc):
        """Sparse design: per arch the column of its fixed part and of each active slot."""
        R, S, C = self.cost.shape
        F = self.fixed.shape[1]
        n = len(enc.res)
        res = enc.res.astype(np.intp)
        active = enc.choice >= 0
        cols = res[:, None] * S * C + np.arange(S)[None, :] * C + np.where(active, enc.choice, 0)
        cols = np.where(active, cols + R * F, -1)
        fixed_col = res * F + enc.fixed.astype(np.intp)
        return fixed_col, cols, R * F + R * S * C, n

    def fit(self, archs, y):
        self.linear.fit(archs, y)
        a, b = self.linear.coef
        prior = np.concatenate([(self.fixed_macs * a + b).ravel(), (self.slot_macs * a).ravel()])
        enc = self.space.encode(archs)
        fixed_col, cols, P, n = self._design(enc)
        X = np.zeros((n, P))
        X[np.arange(n), fixed_col] = 1
        rows, s = np.nonzero(cols >= 0)
        X[rows, cols[rows, s]] = 1
        # ridge towards the MACs prior: solve for the deviation d = theta - prior
        lam = float(self.hparams["ridge"])
        resid = y - X @ prior
        used = X.any(axis=0)
        Xu = X[:, used]
        d = np.linalg.solve(Xu.T @ Xu + lam * np.eye(Xu.shape[1]), Xu.T @ resid)
        theta = prior.copy()
        theta[used] += d
        F = self.fixed.shape[1]
        R = self.fixed.shape[0]
        self.fixed = theta[:R * F].reshape(self.fixed.shape)
        self.cost = theta[R * F:].reshape(self.cost.shape)
        return self

    def predict(self, archs):
        enc = self.space.encode(archs)
        S = enc.choice.shape[1]
        active = enc.choice >= 0
        idx = np.where(active, enc.choice, 0).astype(np.intp)
        res = enc.res.astype(np.intp)
        per = self.cost[res[:, None], np.arange(S)[None, :], idx]
        return self.fixed[res, enc.fixed.astype(np.intp)] + np.where(active, per, 0).sum(axis=1)

    def state(self):
        return {"fixed": torch.from_numpy(self.fixed.copy()), "cost": torch.from_numpy(self.cost.copy()),
                "linear": self.linear.state()}

    def load_state(self, state):
        self.fixed = state["fixed"].double().numpy()
        self.cost = state["cost"].double().numpy()
        self.linear.load_state(state["linear"])


def _macs(layer):
    from blockprof.core.layers import layer_macs
    return float(layer_macs(layer))


def build_model(kind: str, space: DesignSpace, hparams: dict | None = None,
                featurizer: OpGraphFeaturizer | None = None) -> LatencyModel:
    if kind in NETS:
        return TorchLatencyModel(space, kind, hparams, featurizer)
    if kind == "linear":
        return LinearMACsModel(space, hparams)
    if kind == "additive":
        return AdditiveModel(space, hparams)
    from blockprof.common.errors import UserError
    raise UserError(f"unknown latency model '{kind}' (choose from {list(MODEL_KINDS)})")
