"""Archs as op graphs for the latency predictors.

Every arch becomes a chain of nodes: the fixed stem layers, one node per
*active* slot (unit, layer) and the fixed head layers. A node's features are

* its kind (conv, MBConv, bottleneck, pool, linear, multi-layer stem) and its
  block (one-hot over the space's blocks; zero for fixed layers),
* its unit (one-hot; stem and head have their own),
* its shapes, normalised as the seed did by the largest value in the space:
  input / output height (= width), input / output / inner channels, kernel,
  stride, SE, residual, h-swish,
* its cost drivers (normalised the same way): MACs, depthwise MACs,
  activation volume read and written, parameters,
* the arch's input resolution.

Edges run along the chain (producer -> consumer); a residual layer adds an
edge from its input's producer to its output's consumer.

Node features depend only on (resolution, slot position, block) - or on
(resolution, fixed variant) for stem/head - so they are precomputed once per
space and gathered from `space.encode(archs)` for a whole batch at once.
`FEATURE_VERSION` changes whenever this layout does; checkpoints record it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from blockprof.core.layers import (
    BottleneckLayer, ConvLayer, Layer, LinearLayer, MBConvLayer, PoolLayer, layer_macs, layer_params,
)
from blockprof.core.space import Arch, DesignSpace, SlotEncoding

FEATURE_VERSION = 1
KINDS = ("conv", "mbconv", "bottleneck", "pool", "linear", "stem")
NUMERIC = ("h_in", "h_out", "c_in", "c_out", "mid", "kernel", "stride", "se", "residual", "h_swish",
           "macs", "dw_macs", "act_in", "act_out", "params", "resolution")
# numeric features divided by the largest value the space holds (the rest are 0/1 or small ints)
_NORMALISED = ("h_in", "h_out", "c_in", "c_out", "mid", "kernel", "stride", "macs", "dw_macs",
               "act_in", "act_out", "params", "resolution")


def _describe(layers: Sequence[Layer], resolution: int, kind: str | None = None) -> dict:
    """Raw (unnormalised) numeric description of one node made of `layers`."""
    first, last = layers[0], layers[-1]
    d = dict.fromkeys(NUMERIC, 0.0)
    d["resolution"] = resolution
    d["h_in"] = getattr(first, "h_in", 1)
    d["c_in"] = first.c_in
    d["h_out"] = getattr(last, "h_out", 1)
    d["c_out"] = getattr(last, "c_out", last.c_in)
    d["macs"] = sum(layer_macs(x) for x in layers)
    d["params"] = sum(layer_params(x) for x in layers)
    d["act_in"] = d["h_in"] ** 2 * d["c_in"]
    d["act_out"] = d["h_out"] ** 2 * d["c_out"]
    if len(layers) == 1:
        x = first
        d["kernel"] = getattr(x, "kernel", 1) if not isinstance(x, BottleneckLayer) else 3
        d["stride"] = getattr(x, "stride", 1)
        d["mid"] = getattr(x, "mid", 0)
        d["se"] = float(getattr(x, "se", False))
        d["h_swish"] = float(getattr(x, "act", "") == "h_swish")
        if isinstance(x, MBConvLayer):
            d["residual"] = float(x.residual)
            d["dw_macs"] = x.h_out ** 2 * x.mid * x.kernel ** 2
        elif isinstance(x, BottleneckLayer):
            d["residual"] = float(not x.downsample)
    else:  # ResNet stem: several convs + max pool
        d["stride"] = d["h_in"] / max(d["h_out"], 1)
        d["kernel"] = 3
    if kind is None:
        kind = _kind(first) if len(layers) == 1 else "stem"
    d["kind"] = kind
    return d


def _kind(layer: Layer) -> str:
    for cls, k in ((ConvLayer, "conv"), (MBConvLayer, "mbconv"), (BottleneckLayer, "bottleneck"),
                   (PoolLayer, "pool"), (LinearLayer, "linear")):
        if isinstance(layer, cls):
            return k
    raise TypeError(f"no node kind for layer {layer!r}")  # never skip an unknown op


class _Structure:
    """Which layers make each node, as the space's family declares them."""

    def __init__(self, space: DesignSpace):
        self.space = space
        self.n_fixed = space.n_fixed_variants

    def pre(self, r: int, f: int) -> list[list[Layer]]:
        return [[x] for x in self.space.fixed_layers(r, f)[0]]

    def post(self, r: int, f: int) -> list[list[Layer]]:
        return [[x] for x in self.space.fixed_layers(r, f)[1]]

    def n_choices(self) -> int:
        return self.space.n_slot_choices

    def slot(self, r: int, s: int, c: int) -> tuple[list[Layer], int]:
        """Layers of choice c at slot position s, and the block's index in `space.blocks`."""
        return self.space.choice_layers(r, s, c)

    def unit_of(self, s: int) -> int:
        return int(self.space.slot_unit[s])


@dataclass
class GraphBatch:
    """A batch of op graphs, nodes compacted to the front (padding at the end).

    node_ids[n, N] index rows of `table` (the featurizer's node feature table; its
    last row is all zeros, for padding), mask[n, N] valid nodes, residual[n, N]
    (the node adds its input to its output), lengths[n] node counts. Models embed
    the table once and gather, instead of gathering raw features per node."""
    node_ids: torch.Tensor
    mask: torch.Tensor
    residual: torch.Tensor
    lengths: torch.Tensor
    table: torch.Tensor

    def __len__(self) -> int:
        return self.node_ids.shape[0]

    @property
    def x(self) -> torch.Tensor:
        """Node features [n, N, D]."""
        return self.table[self.node_ids]

    def index(self, idx) -> "GraphBatch":
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
        return GraphBatch(self.node_ids[idx], self.mask[idx], self.residual[idx], self.lengths[idx], self.table)

    def trimmed(self) -> "GraphBatch":
        """Drop padding columns no graph in this batch uses."""
        n = int(self.lengths.max()) if len(self) else 0
        return GraphBatch(self.node_ids[:, :n], self.mask[:, :n], self.residual[:, :n], self.lengths, self.table)

    def adjacency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense batched adjacency, both directions, mean-normalised:

        fwd[i, dst, src] = 1/in-degree(dst) for each edge src -> dst (the chain k -> k+1
        and, for a residual node k, the skip k-1 -> k+1); bwd[i, src, dst] =
        1/out-degree(src) for the same edges. Degrees are known from the chain, so the
        normalised values are written directly."""
        n, N = self.mask.shape
        fwd = torch.zeros(n, N, N)
        bwd = torch.zeros(n, N, N)
        if N < 2:
            return fwd, bwd
        L = self.lengths[:, None]
        k = torch.arange(N - 1)
        chain = (k[None, :] + 1 < L).float()                       # edge k -> k+1
        skip = torch.zeros(n, N - 1)                               # edge k-1 -> k+1 (index k-1)
        if N > 2:
            skip[:, :N - 2] = (self.residual[:, 1:N - 1] & (k[None, 1:] + 1 < L)).float()
        in_deg = chain.clone()                                     # into node k+1
        in_deg[:, 1:] += skip[:, :N - 2]
        out_deg = chain.clone()                                    # out of node k
        out_deg[:, :N - 2] += skip[:, :N - 2]
        inv_in = chain / in_deg.clamp_min(1)
        inv_out = chain / out_deg.clamp_min(1)
        fwd.diagonal(offset=-1, dim1=1, dim2=2).copy_(inv_in)
        bwd.diagonal(offset=1, dim1=1, dim2=2).copy_(inv_out)
        if N > 2:
            s = skip[:, :N - 2]
            fwd.diagonal(offset=-2, dim1=1, dim2=2).copy_(s * inv_in[:, 1:])
            bwd.diagonal(offset=2, dim1=1, dim2=2).copy_(s / out_deg[:, :N - 2].clamp_min(1))
        return fwd, bwd


class OpGraphFeaturizer:
    """Turns archs of one space into `GraphBatch`es, vectorised over the batch."""

    def __init__(self, space: DesignSpace):
        self.space = space
        st = _Structure(space)
        R, S, C, Fv = len(space.resolutions), space.n_slot_positions, st.n_choices(), st.n_fixed
        self.blocks = tuple(space.blocks)
        units = space.n_units
        self.kind_off = 0
        self.block_off = len(KINDS)
        self.unit_off = self.block_off + len(self.blocks)
        self.num_off = self.unit_off + units + 2  # + stem, head
        self.dim = self.num_off + len(NUMERIC)

        raw_pre = [[[_describe(ls, r) for ls in st.pre(r, f)] for f in range(Fv)] for r in space.resolutions]
        raw_post = [[[_describe(ls, r) for ls in st.post(r, f)] for f in range(Fv)] for r in space.resolutions]
        raw_slot, blk = [], np.full((R, S, C), -1, dtype=np.int64)
        for ri, r in enumerate(space.resolutions):
            per_s = []
            for s in range(S):
                per_c = []
                for c in range(C):
                    layers, b = st.slot(r, s, c)
                    per_c.append(_describe(layers, r) if layers else None)
                    blk[ri, s, c] = b
                per_s.append(per_c)
            raw_slot.append(per_s)
        every = [d for a in raw_pre + raw_post for b in a for d in b]
        every += [d for a in raw_slot for b in a for d in b if d is not None]
        self.norm = {k: float(max(max(d[k] for d in every), 1e-9)) for k in _NORMALISED}
        self.n_pre, self.n_post = len(raw_pre[0][0]), len(raw_post[0][0])

        def vec(d, unit_col, block):
            v = np.zeros(self.dim, dtype=np.float32)
            v[self.kind_off + KINDS.index(d["kind"])] = 1
            if block >= 0:
                v[self.block_off + block] = 1
            v[self.unit_off + unit_col] = 1
            for i, k in enumerate(NUMERIC):
                v[self.num_off + i] = d[k] / self.norm[k] if k in self.norm else d[k]
            return v

        self.pre_x = np.array([[[vec(d, units, -1) for d in f] for f in r] for r in raw_pre],
                              dtype=np.float32).reshape(R, Fv, self.n_pre, self.dim)
        self.post_x = np.array([[[vec(d, units + 1, -1) for d in f] for f in r] for r in raw_post],
                               dtype=np.float32).reshape(R, Fv, self.n_post, self.dim)
        self.pre_res = np.array([[[d["residual"] > 0 for d in f] for f in r] for r in raw_pre],
                                dtype=bool).reshape(R, Fv, self.n_pre)
        self.post_res = np.array([[[d["residual"] > 0 for d in f] for f in r] for r in raw_post],
                                 dtype=bool).reshape(R, Fv, self.n_post)
        self.slot_x = np.zeros((R, S, C, self.dim), dtype=np.float32)
        self.slot_res = np.zeros((R, S, C), dtype=bool)
        for ri in range(R):
            for s in range(S):
                for c in range(C):
                    d = raw_slot[ri][s][c]
                    if d is not None:
                        self.slot_x[ri, s, c] = vec(d, st.unit_of(s), int(blk[ri, s, c]))
                        self.slot_res[ri, s, c] = d["residual"] > 0
        self.n_nodes = self.n_pre + S + self.n_post
        # one flat table of every distinct node (+ a zero row for padding), and id lookups
        parts = [self.pre_x.reshape(-1, self.dim), self.slot_x.reshape(-1, self.dim), self.post_x.reshape(-1, self.dim)]
        res_parts = [self.pre_res.ravel(), self.slot_res.ravel(), self.post_res.ravel()]
        offs = np.cumsum([0] + [len(p) for p in parts])
        self._pre_ids = (offs[0] + np.arange(parts[0].shape[0])).reshape(self.pre_res.shape)
        self._slot_ids = (offs[1] + np.arange(parts[1].shape[0])).reshape(self.slot_res.shape)
        self._post_ids = (offs[2] + np.arange(parts[2].shape[0])).reshape(self.post_res.shape)
        self.pad_id = int(offs[3])
        self.table = torch.from_numpy(np.concatenate(parts + [np.zeros((1, self.dim), np.float32)]))
        self._residual = np.concatenate(res_parts + [np.zeros(1, bool)])

    # ---- identity, stored in checkpoints ----
    def signature(self) -> dict:
        """Plain-typed description that a checkpoint must match to be usable with this space."""
        return {"feature_version": FEATURE_VERSION, "dim": int(self.dim), "blocks": list(self.blocks),
                "resolutions": [int(r) for r in self.space.resolutions],
                "norm": {k: float(v) for k, v in sorted(self.norm.items())}}

    # ---- batched featurisation ----
    def __call__(self, archs: Sequence[Arch]) -> GraphBatch:
        return self.from_encoding(self.encode(archs))

    def encode(self, archs: Sequence[Arch]) -> SlotEncoding:
        return self.space.encode(archs)

    def _nodes(self, enc: SlotEncoding) -> tuple[np.ndarray, np.ndarray]:
        """Every graph's possible nodes (pre, slots, post) as table ids [n, P+S+Q], and which are active."""
        n, S = enc.choice.shape
        res = enc.res.astype(np.intp)
        fixed = enc.fixed.astype(np.intp)
        active = enc.choice >= 0
        idx = np.where(active, enc.choice, 0).astype(np.intp)
        ids_full = np.concatenate([self._pre_ids[res, fixed], self._slot_ids[res[:, None], np.arange(S)[None, :], idx],
                                   self._post_ids[res, fixed]], axis=1)
        m_full = np.concatenate([np.ones((n, self.n_pre), bool), active, np.ones((n, self.n_post), bool)], axis=1)
        return ids_full, m_full

    def from_encoding(self, enc: SlotEncoding) -> GraphBatch:
        ids_full, m_full = self._nodes(enc)
        n = len(ids_full)
        # compact: active nodes to the front, in network order (a scatter by running count)
        lengths = m_full.sum(axis=1)
        N = int(lengths.max()) if n else 0
        pos = np.cumsum(m_full, axis=1) - 1
        rows = np.broadcast_to(np.arange(n)[:, None], m_full.shape)[m_full]
        ids = np.full((n, N), self.pad_id, dtype=np.int64)
        ids[rows, pos[m_full]] = ids_full[m_full]
        mask = np.arange(N)[None, :] < lengths[:, None]
        resid = self._residual[ids]
        return GraphBatch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(resid),
                          torch.from_numpy(lengths.astype(np.int64)), self.table)

    def packed_nodes(self, enc: SlotEncoding) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The nodes of every graph packed end to end, in network order, without padding:
        (table ids [T], residual [T], lengths [n]) - what `from_encoding` pads, for models
        that run on packed chains."""
        ids_full, m_full = self._nodes(enc)
        ids = ids_full[m_full].astype(np.int64)
        return ids, self._residual[ids], m_full.sum(axis=1).astype(np.int64)


def check_signature(saved: dict, current: dict, where: str) -> str | None:
    """Why a checkpoint's feature signature does not fit the current space, or None."""
    if saved.get("feature_version") != current["feature_version"]:
        return (f"{where} was built with feature version {saved.get('feature_version')}, "
                f"this code uses {current['feature_version']}")
    for key in ("dim", "blocks", "resolutions"):
        if saved.get(key) != current[key]:
            return f"{where} has {key}={saved.get(key)}, the configured space has {current[key]}"
    norm_s, norm_c = saved.get("norm", {}), current["norm"]
    if set(norm_s) != set(norm_c) or any(not math.isclose(norm_s[k], norm_c[k], rel_tol=1e-6) for k in norm_c):
        return f"{where} normalises features differently from the configured space (different width?)"
    return None
