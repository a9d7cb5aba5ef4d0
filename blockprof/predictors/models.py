"""Latency models over one design space.

* ``gnn`` (default): directed message passing over the op graph of
  `predictors.features` (a chain with skips: a band adjacency, run on the nodes
  of all graphs packed end to end), read out as a sum of per-node latencies
  (end-to-end latency is close to a sum over layers; the messages let a node's
  cost depend on its neighbours).
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
    """Directed message passing over the op graph.

    Each round a node's state h grows by act(W_s h + mean over producers of W_f h +
    mean over consumers of W_b h) (the mean-normalised adjacency of
    `GraphBatch.adjacency`). Read-out: the sum over nodes of a per-node latency
    w . act(W_h h + W_x x) + b.

    Every op graph is a chain whose only other edges skip one node (around a
    residual node), so the adjacency is a band: the forward runs on the nodes of
    all graphs packed end to end and each message is a shifted, weighted row of
    its neighbour - four multiply-adds per round instead of dense [N, N] products,
    and no padding. Everything that depends on a node's features only (its input
    embedding, the first round's three linear maps, the read-out's feature term)
    is computed once per distinct node of the featurizer's table and gathered in
    one go: the same maths as applying the layers to every node."""

    chunk_nodes = 4096  # inference: nodes per step (measured: 4096 beats 1024 .. 32768)
    packs_graphs = True  # batches itself: no length sorting or padding needed by the caller

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
        ids, coef, lengths = packed_chains(g)
        return self.forward_packed(g.table, ids, coef, lengths)

    def forward_packed(self, table: torch.Tensor, ids: torch.Tensor, coef: torch.Tensor,
                       lengths: torch.Tensor) -> torch.Tensor:
        """Latency (scaled) per graph from the packed nodes of `packed_chains`."""
        H = self.head_h.out_features
        emb = self.act(self.inp(table))                                      # [K, H]: every distinct node once
        # per distinct node: [read-out feature term | first round's W_s, W_f, W_b], one gather for all four
        # (h_L = h_0 + sum_i d_i, so the read-out's W_h h_L + W_x x = (W_h h_0 + W_x x) + W_h sum_i d_i)
        w0 = torch.cat([self.self_w[0].weight, self.fwd_w[0].weight, self.bwd_w[0].weight])
        b0 = torch.cat([self.self_w[0].bias, emb.new_zeros(2 * H)])
        tab = torch.cat([self.head_h(emb) + self.head_x(table), torch.addmm(b0, emb, w0.t())], dim=1)  # [K, 4H]
        rest = [(torch.cat([ws.weight, wf.weight, wb.weight]).t().contiguous(), ws.bias)
                for ws, wf, wb in zip(self.self_w[1:], self.fwd_w[1:], self.bwd_w[1:])]
        head_t = self.head_h.weight.t().contiguous()
        n = lengths.shape[0]
        graph = torch.from_numpy(np.repeat(np.arange(n), lengths.numpy()))
        if torch.is_grad_enabled():  # training: one pass, out-of-place (autograd)
            y = self._node_latency(tab, emb, rest, head_t, ids, coef, inplace=False)
            return torch.zeros(n, dtype=y.dtype).index_add(0, graph, y) + self.out.bias[0] * lengths.to(y.dtype)
        out = torch.zeros(n, dtype=tab.dtype)
        ends = np.cumsum(lengths.numpy())
        total = int(ends[-1]) if n else 0
        # steps of whole graphs, each ending at the first graph end at or past a multiple of chunk_nodes
        cuts = ends[np.searchsorted(ends, np.arange(self.chunk_nodes, total, self.chunk_nodes))].tolist()
        bounds = sorted({0, total, *cuts})
        for a, b in zip(bounds[:-1], bounds[1:]):
            y = self._node_latency(tab, emb, rest, head_t, ids[a:b], coef[a:b], inplace=True)
            out.index_add_(0, graph[a:b], y)
        return out.add_(self.out.bias[0] * lengths.to(out.dtype))

    def _node_latency(self, tab, emb, rest, head_t, ids, coef, inplace: bool) -> torch.Tensor:
        """w . act(W_h h_L + W_x x) per node (without the read-out bias)."""
        F = nn.functional
        H = self.head_h.out_features
        g = tab.index_select(0, ids)                                         # [t, 4H]
        z = g[:, :H]
        d = _messages(g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:], coef, inplace)
        d = F.silu(d, inplace=inplace)
        acc, h = d, None
        for w, bias in rest:  # later rounds: the states depend on the neighbours, no table
            h = (emb.index_select(0, ids) if h is None else h) + d
            sfb = torch.addmm(torch.cat([bias, bias.new_zeros(2 * H)]), h, w)
            d = F.silu(_messages(sfb[:, :H], sfb[:, H:2 * H], sfb[:, 2 * H:], coef, inplace), inplace=inplace)
            acc = acc + d
        z = torch.addmm(z, acc, head_t)
        z = F.silu(z, inplace=inplace)
        return z @ self.out.weight[0]


def _messages(s: torch.Tensor, f: torch.Tensor, b: torch.Tensor, coef: torch.Tensor, inplace: bool) -> torch.Tensor:
    """s + A_fwd f + A_bwd b on packed chains: node k hears f of k-1 and k-2 (coef[:, 0:2])
    and b of k+1 and k+2 (coef[:, 2:4]); the coefficients are 0 across graph ends."""
    if inplace:  # s is a slice of a freshly gathered tensor: accumulate into it
        u = s
        u[1:].addcmul_(coef[1:, 0:1], f[:-1])
        u[2:].addcmul_(coef[2:, 1:2], f[:-2])
        u[:-1].addcmul_(coef[:-1, 2:3], b[1:])
        u[:-2].addcmul_(coef[:-2, 3:4], b[2:])
        return u
    F = nn.functional
    return (s + coef[:, 0:1] * F.pad(f[:-1], (0, 0, 1, 0)) + coef[:, 1:2] * F.pad(f[:-2], (0, 0, 2, 0))
            + coef[:, 2:3] * F.pad(b[1:], (0, 0, 0, 1)) + coef[:, 3:4] * F.pad(b[2:], (0, 0, 0, 2)))


def packed_chains(g: GraphBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The padded batch's nodes packed end to end: (table ids [T], band coefficients [T, 4], lengths [n])."""
    mask = g.mask.numpy()
    ids, coef, lengths = chain_coefficients(g.node_ids.numpy()[mask], g.residual.numpy()[mask], g.lengths.numpy())
    return ids, coef.to(g.table.dtype), lengths


def chain_coefficients(ids: np.ndarray, residual: np.ndarray, lengths: np.ndarray):
    """Band coefficients of packed chains (`OpGraphFeaturizer.packed_nodes`), as tensors
    (ids [T], coef [T, 4], lengths [n]).

    coef[k] = (1/in-degree for the edge k-1 -> k, 1/in-degree for the skip k-2 -> k,
    1/out-degree for k -> k+1, 1/out-degree for the skip k -> k+2), each 0 where the
    edge does not exist: the non-zeros of `GraphBatch.adjacency`, row by row (a skip
    runs around every residual node that is neither first nor last)."""
    T = ids.shape[0]
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(T) - np.repeat(starts, lengths)        # position within the graph
    left = np.repeat(lengths, lengths) - 1 - pos           # nodes after this one
    chain_in = (pos >= 1).astype(np.float32)
    chain_out = (left >= 1).astype(np.float32)
    skip_in = np.zeros(T, np.float32)
    skip_out = np.zeros(T, np.float32)
    skip_in[2:] = (pos[2:] >= 2) & residual[1:-1]          # k-1 is residual and not first
    skip_out[:-2] = (left[:-2] >= 2) & residual[1:-1]      # k+1 is residual and not last
    in_deg = np.maximum(chain_in + skip_in, 1)
    out_deg = np.maximum(chain_out + skip_out, 1)
    coef = np.stack([chain_in / in_deg, skip_in / in_deg, chain_out / out_deg, skip_out / out_deg], axis=1)
    return torch.from_numpy(ids), torch.from_numpy(coef), torch.from_numpy(lengths)


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
        if getattr(self.net, "packs_graphs", False):
            return self.net(g).double().numpy() * self.scale
        order = torch.argsort(g.lengths, stable=True)
        out = torch.empty(n, dtype=torch.float32)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            out[idx] = self.net(g.index(idx).trimmed())
        return out.double().numpy() * self.scale

    def predict(self, archs):
        if getattr(self.net, "packs_graphs", False) and hasattr(self.featurizer, "packed_nodes"):
            # straight to packed chains: no padded batch to build and unpack
            ids, coef, lengths = chain_coefficients(*self.featurizer.packed_nodes(self.featurizer.encode(archs)))
            with torch.inference_mode():
                self.net.eval()
                out = self.net.forward_packed(self.featurizer.table, ids, coef.to(self.featurizer.table.dtype), lengths)
            return out.double().numpy() * self.scale
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
