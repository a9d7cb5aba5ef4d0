"""What the search needs to know about a space family, in one small adapter each.

The mutator, the samplers and the insight profiles are written once over
"units of layer tokens"; only these hooks differ between families:

- `MBConvOps` (mbv3, mbv3_w10, pn): a unit's candidates are block tokens
  (`mbconv3_e6_k7`); edits are add / remove / swap a layer's block.
- `ResNetOps` (resnet50): a unit's candidates are width indices (the schema's
  `unit_width_indices`). Unit 0 is the stem (`stem_d{d}_w{i}_w{j}`): edits toggle
  its depth or redraw its two widths. Units 1-4 hold `bneck_e{e}_w{w}` with one
  width per unit: edits add / remove a layer, swap one layer's expansion, or
  swap the unit's width.

Every edit is drawn with the passed `np.random.Generator`; every redraw loop has a cap.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blockprof.core.space import DesignSpace, MBConvSpace, ResNetSpace

Unit = tuple  # a unit's layer tokens

_REDRAW_CAP = 100


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


class FamilyOps:
    """Hooks shared by the mutator, the samplers and the insight profiles."""

    candidates_key = "unit_candidates"
    candidate_word = "block"

    def __init__(self, space: DesignSpace):
        self.space = space

    # -- candidates ----------------------------------------------------
    def universe(self, unit: int) -> tuple:
        """Every candidate a profile may list for `unit`."""
        raise NotImplementedError

    def parse_candidate(self, value):
        """A YAML value as a candidate (raise ValueError when it has the wrong type)."""
        return value

    def candidate_of_row(self, row: dict):
        """The candidate a profile summary row is about, or None (rows not about a candidate)."""
        raise NotImplementedError

    def unit_fits(self, cands: Sequence, unit: int, layers: Unit) -> bool:
        """Whether a unit's layers use only the profile's candidates."""
        raise NotImplementedError

    # -- sampling ------------------------------------------------------
    def sample_units(self, cands, min_layers, max_layers, rng: np.random.Generator, n: int) -> list[list[Unit]]:
        """n random archs' units (without resolution), uniform per unit: depth, then each layer."""
        raise NotImplementedError

    # -- random-mutation edits ------------------------------------------
    def edits(self, cands: Sequence, unit: int, layers: Unit, lo: int, hi: int) -> list[str]:
        raise NotImplementedError

    def apply(self, edit: str, cands: Sequence, unit: int, layers: Unit, rng) -> Unit:
        raise NotImplementedError

    # -- OFA-style genetic operators -----------------------------------
    def gene_mutate(self, cands, unit: int, layers: Unit, lo: int, hi: int, p: float, rng) -> Unit:
        raise NotImplementedError

    def crossover(self, unit: int, a: Unit, b: Unit, rng) -> Unit:
        raise NotImplementedError

    def pack(self, archs):
        """Archs in the family's batch form, for the *_rows operators."""
        return list(archs)

    def gene_mutate_rows(self, cands, lo, hi, packed, rows, p: float, rng) -> list[list[Unit]]:
        """`gene_mutate` of every unit of packed[r] for r in rows (families may vectorise it)."""
        return [[self.gene_mutate(cands[u], u, layers, lo[u], hi[u], p, rng) for u, layers in enumerate(packed[r].units)]
                for r in rows]

    def crossover_rows(self, packed, rows_a, rows_b, rng) -> list[list[Unit]]:
        return [[self.crossover(u, x, y, rng) for u, (x, y) in enumerate(zip(packed[i].units, packed[j].units))]
                for i, j in zip(rows_a, rows_b)]

    # -- cost-lowering edits (repair of archs over a constraint) --------
    def shrink_edits(self, cands, unit: int, layers: Unit, lo: int) -> list[str]:
        raise NotImplementedError

    def shrink(self, edit: str, cands, unit: int, layers: Unit, rng) -> Unit:
        raise NotImplementedError


# ===================================================================== MBConv
class MBConvOps(FamilyOps):
    def __init__(self, space: MBConvSpace):
        super().__init__(space)
        self.ek = {b: space.block_ek(b) for b in space.blocks}
        self.token = {ek: b for b, ek in self.ek.items()}
        self._table_cache: dict = {}

    def universe(self, unit):
        return tuple(self.space.unit_blocks(unit))

    def parse_candidate(self, value):
        if not isinstance(value, str):
            raise ValueError(f"expected a block name, got {value!r}")
        return value

    def candidate_of_row(self, row):
        b = row.get("block")
        return b if isinstance(b, str) and b in self.space.block_index else None

    def unit_fits(self, cands, unit, layers):
        return all(t in cands for t in layers)

    def sample_units(self, cands, min_layers, max_layers, rng, n):
        U = len(cands)
        lo, hi = np.asarray(min_layers), np.asarray(max_layers)
        depths = rng.integers(lo, hi + 1, size=(n, U))
        tokens = []
        for u in range(U):
            table = np.empty(len(cands[u]), dtype=object)
            table[:] = cands[u]
            tokens.append(table[rng.integers(0, len(cands[u]), size=(n, hi[u]))].tolist())
        return [[tuple(tokens[u][i][:depths[i, u]]) for u in range(U)] for i in range(n)]

    def edits(self, cands, unit, layers, lo, hi):
        out = []
        if len(layers) < hi:
            out.append("add")
        if len(layers) > lo:
            out.append("remove")
        if layers and (len(cands) > 1 or any(t != cands[0] for t in layers)):
            out.append("swap")
        return out

    def apply(self, edit, cands, unit, layers, rng):
        layers = list(layers)
        if edit == "add":
            layers.insert(int(rng.integers(len(layers) + 1)), _pick(rng, cands))
        elif edit == "remove":
            layers.pop(int(rng.integers(len(layers))))
        elif edit == "swap":  # one layer to another candidate of the unit
            where = [j for j, t in enumerate(layers) if len(cands) > 1 or t != cands[0]]
            j = _pick(rng, where)
            others = [c for c in cands if c != layers[j]]
            layers[j] = _pick(rng, others)
        else:
            raise ValueError(f"unknown edit {edit}")
        return tuple(layers)

    def gene_mutate(self, cands, unit, layers, lo, hi, p, rng):
        """OFA's arch mutation: the depth, and each layer's kernel and expansion, are
        redrawn with probability p each; a block outside the unit's candidates is
        replaced by a uniform candidate. One draw of uniforms per unit."""
        sp: MBConvSpace = self.space
        r = rng.random(2 + 5 * hi)
        layers = list(layers)
        if lo < hi and r[0] < p:
            d = lo + min(int(r[1] * (hi - lo + 1)), hi - lo)
            for j in range(len(layers), d):
                layers.append(cands[min(int(r[2 + 5 * j + 4] * len(cands)), len(cands) - 1)])
            del layers[d:]
        nk, ne, nc = len(sp.kernels), len(sp.expands), len(cands)
        for j, tok in enumerate(layers):
            q = r[2 + 5 * j: 7 + 5 * j]
            e, k = self.ek[tok]
            if q[0] < p:
                k = sp.kernels[min(int(q[1] * nk), nk - 1)]
            if q[2] < p:
                e = sp.expands[min(int(q[3] * ne), ne - 1)]
            tok = self.token[(e, k)]
            layers[j] = tok if tok in cands else cands[min(int(q[4] * nc), nc - 1)]
        return tuple(layers)

    def crossover(self, unit, a, b, rng):
        r = rng.random(1 + max(len(a), len(b)))
        d = len(a) if r[0] < 0.5 else len(b)
        out = []
        for j in range(d):
            both = j < len(a) and j < len(b)
            out.append((a[j] if r[1 + j] < 0.5 else b[j]) if both else (a[j] if j < len(a) else b[j]))
        return tuple(out)

    # -- batched genetic operators: archs as block-index arrays [n, unit, layer] --
    def _encode(self, archs) -> tuple[np.ndarray, np.ndarray]:
        sp: MBConvSpace = self.space
        choice = sp.encode(archs).choice.astype(np.int64)
        H = max(sp.max_layers)
        blk = np.full((len(archs), sp.n_units, H), -1, dtype=np.int64)
        for u, off in enumerate(sp.slot_offsets):
            blk[:, u, :sp.max_layers[u]] = choice[:, off:off + sp.max_layers[u]]
        return blk, (blk >= 0).sum(axis=2)

    def _decode(self, blk: np.ndarray, depth: np.ndarray) -> list[list[Unit]]:
        names = np.empty(len(self.space.blocks), dtype=object)
        names[:] = self.space.blocks
        tok = names[np.maximum(blk, 0)].tolist()
        d = depth.tolist()
        return [[tuple(tok[i][u][:d[i][u]]) for u in range(blk.shape[1])] for i in range(blk.shape[0])]

    def _tables(self, cands):
        key = tuple(cands)
        if key not in self._table_cache:
            self._table_cache[key] = self._make_tables(cands)
        return self._table_cache[key]

    def _make_tables(self, cands):
        sp: MBConvSpace = self.space
        U, B = len(cands), len(sp.blocks)
        allowed = np.zeros((U, B), dtype=bool)
        n_c = np.array([len(c) for c in cands])
        idx = np.zeros((U, int(n_c.max())), dtype=np.int64)
        for u, cs in enumerate(cands):
            ids = [sp.block_index[c] for c in cs]
            allowed[u, ids] = True
            idx[u, :len(ids)] = ids
        return allowed, idx, n_c

    def pack(self, archs):
        return self._encode(archs) if archs else (np.zeros((0, self.space.n_units, 1), np.int64), None)

    def gene_mutate_rows(self, cands, lo, hi, packed, rows, p, rng):
        """`gene_mutate` for a whole batch in numpy (same rule, one draw per batch)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        sp: MBConvSpace = self.space
        blk, depth = packed[0][rows], packed[1][rows]
        n, U, H = blk.shape
        lo_a, hi_a = np.asarray(lo)[None, :], np.asarray(hi)[None, :]
        allowed, cidx, n_c = self._tables(cands)
        D = rng.random((n, U, 2))
        Q = rng.random((n, U, H, 5))
        flip = (D[..., 0] < p) & (lo_a < hi_a)
        new_d = lo_a + np.minimum((D[..., 1] * (hi_a - lo_a + 1)).astype(np.int64), hi_a - lo_a)
        depth = np.where(flip, new_d, depth)
        urange = np.arange(U)[None, :, None]
        pick = cidx[urange, np.minimum((Q[..., 4] * n_c[None, :, None]).astype(np.int64), n_c[None, :, None] - 1)]
        b = np.where(blk >= 0, blk, pick)  # a grown layer starts as a random candidate
        nk, ne = len(sp.kernels), len(sp.expands)
        k = np.where(Q[..., 0] < p, np.minimum((Q[..., 1] * nk).astype(np.int64), nk - 1), b % nk)
        e = np.where(Q[..., 2] < p, np.minimum((Q[..., 3] * ne).astype(np.int64), ne - 1), b // nk)
        b = e * nk + k
        b = np.where(allowed[urange, b], b, pick)
        return self._decode(b, depth)

    def crossover_rows(self, packed, rows_a, rows_b, rng):
        rows_a, rows_b = np.asarray(rows_a, dtype=np.int64), np.asarray(rows_b, dtype=np.int64)
        if not len(rows_a):
            return []
        ba, da = packed[0][rows_a], packed[1][rows_a]
        bb, db = packed[0][rows_b], packed[1][rows_b]
        n, U, H = ba.shape
        R = rng.random((n, U, H + 1))
        depth = np.where(R[..., 0] < 0.5, da, db)
        both = (ba >= 0) & (bb >= 0)
        b = np.where(both, np.where(R[..., 1:] < 0.5, ba, bb), np.where(ba >= 0, ba, bb))
        return self._decode(b, depth)

    def shrink_edits(self, cands, unit, layers, lo):
        return ["remove"] if len(layers) > lo else []

    def shrink(self, edit, cands, unit, layers, rng):
        return self.apply(edit, cands, unit, layers, rng)


# ===================================================================== ResNet
class ResNetOps(FamilyOps):
    candidates_key = "unit_width_indices"
    candidate_word = "width index"

    def __init__(self, space: ResNetSpace):
        super().__init__(space)
        self.sp = space

    def universe(self, unit):
        return tuple(range(len(self.sp.width_mults)))

    def parse_candidate(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"expected a width index, got {value!r}")
        return int(value)

    def candidate_of_row(self, row):
        w = row.get("width")
        try:
            w = float(w)
        except (TypeError, ValueError):
            return None
        return int(w) if np.isfinite(w) and int(w) in self.universe(0) else None

    def unit_fits(self, cands, unit, layers):
        if unit == 0:
            _, i, j = self.sp.stem(layers[0])
            return i in cands and j in cands
        return all(self.sp.bneck(t)[1] in cands for t in layers)

    # token helpers
    @staticmethod
    def _stem(d, i, j):
        return f"stem_d{d}_w{i}_w{j}"

    @staticmethod
    def _bneck(e, w):
        return f"bneck_e{e}_w{w}"

    def sample_units(self, cands, min_layers, max_layers, rng, n):
        sp = self.sp
        out = [[None] * len(cands) for _ in range(n)]
        d0 = rng.integers(0, len(sp.stem_depths), size=n)
        w0 = rng.integers(0, len(cands[0]), size=(n, 2))
        for i in range(n):
            out[i][0] = (self._stem(sp.stem_depths[d0[i]], cands[0][w0[i, 0]], cands[0][w0[i, 1]]),)
        for u in range(1, len(cands)):
            depth = rng.integers(min_layers[u], max_layers[u] + 1, size=n)
            w = rng.integers(0, len(cands[u]), size=n)
            e = rng.integers(0, len(sp.expands), size=(n, max_layers[u]))
            for i in range(n):
                out[i][u] = tuple(self._bneck(sp.expands[e[i, j]], cands[u][w[i]]) for j in range(depth[i]))
        return out

    def _stem_pairs(self, cands, cur):
        return [(i, j) for i in cands for j in cands if (i, j) != cur]

    def edits(self, cands, unit, layers, lo, hi):
        if unit == 0:
            d, i, j = self.sp.stem(layers[0])
            return ["stem_depth"] + (["stem_width"] if self._stem_pairs(cands, (i, j)) else [])
        out = []
        if len(layers) < hi:
            out.append("add")
        if len(layers) > lo:
            out.append("remove")
        if layers:
            out.append("swap_e")
        w = self.sp.bneck(layers[0])[1] if layers else None
        if any(c != w for c in cands):
            out.append("swap_w")
        return out

    def apply(self, edit, cands, unit, layers, rng):
        sp = self.sp
        if unit == 0:
            d, i, j = sp.stem(layers[0])
            if edit == "stem_depth":  # two choices: skip the middle conv or not
                d = min(sp.stem_depths) if d == max(sp.stem_depths) else max(sp.stem_depths)
            elif edit == "stem_width":
                i, j = _pick(rng, self._stem_pairs(cands, (i, j)))
            else:
                raise ValueError(f"unknown stem edit {edit}")
            return (self._stem(d, i, j),)
        layers = list(layers)
        w = sp.bneck(layers[0])[1]
        if edit == "add":
            layers.insert(int(rng.integers(len(layers) + 1)), self._bneck(_pick(rng, sp.expands), w))
        elif edit == "remove":
            layers.pop(int(rng.integers(len(layers))))
        elif edit == "swap_e":
            j = int(rng.integers(len(layers)))
            e = sp.bneck(layers[j])[0]
            layers[j] = self._bneck(_pick(rng, [x for x in sp.expands if x != e]), w)
        elif edit == "swap_w":
            w = _pick(rng, [c for c in cands if c != w])
            layers = [self._bneck(sp.bneck(t)[0], w) for t in layers]
        else:
            raise ValueError(f"unknown edit {edit}")
        return tuple(layers)

    def gene_mutate(self, cands, unit, layers, lo, hi, p, rng):
        """OFA's ResNet mutation: stem depth, each width, each unit's depth and each
        layer's expansion redrawn with probability p each."""
        sp = self.sp
        if unit == 0:
            d, i, j = sp.stem(layers[0])
            if rng.random() < p:
                d = _pick(rng, sp.stem_depths)
            if rng.random() < p:
                i = _pick(rng, cands)
            if rng.random() < p:
                j = _pick(rng, cands)
            return (self._stem(d, i, j),)
        es = [sp.bneck(t)[0] for t in layers]
        w = sp.bneck(layers[0])[1]
        if w not in cands or rng.random() < p:
            w = _pick(rng, cands)
        if lo < hi and rng.random() < p:
            d = int(rng.integers(lo, hi + 1))
            while len(es) < d:
                es.append(_pick(rng, sp.expands))
            del es[d:]
        es = [_pick(rng, sp.expands) if rng.random() < p else e for e in es]
        return tuple(self._bneck(e, w) for e in es)

    def crossover(self, unit, a, b, rng):
        sp = self.sp
        if unit == 0:
            (da, ia, ja), (db, ib, jb) = sp.stem(a[0]), sp.stem(b[0])
            pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
            return (self._stem(pick(da, db), pick(ia, ib), pick(ja, jb)),)
        w = sp.bneck(a[0])[1] if rng.random() < 0.5 else sp.bneck(b[0])[1]
        d = len(a) if rng.random() < 0.5 else len(b)
        es = []
        for j in range(d):
            both = j < len(a) and j < len(b)
            src = (a if rng.random() < 0.5 else b) if both else (a if j < len(a) else b)
            es.append(sp.bneck(src[j])[0])
        return tuple(self._bneck(e, w) for e in es)

    def shrink_edits(self, cands, unit, layers, lo):
        sp = self.sp
        if unit == 0:
            d, i, j = sp.stem(layers[0])
            out = ["stem_depth"] if d > min(sp.stem_depths) else []
            if any(c < i for c in cands) or any(c < j for c in cands):
                out.append("stem_narrow")
            return out
        out = ["remove"] if len(layers) > lo else []
        if any(c < sp.bneck(layers[0])[1] for c in cands):
            out.append("narrow")
        return out

    def shrink(self, edit, cands, unit, layers, rng):
        sp = self.sp
        if edit == "stem_narrow":
            d, i, j = sp.stem(layers[0])
            m = min(cands)
            return (self._stem(d, min(i, m), min(j, m)),)
        if edit == "narrow":
            w = sp.bneck(layers[0])[1]
            w = max(c for c in cands if c < w)
            return tuple(self._bneck(sp.bneck(t)[0], w) for t in layers)
        return self.apply(edit, cands, unit, layers, rng)


def family_ops(space: DesignSpace) -> FamilyOps:
    if isinstance(space, MBConvSpace):
        return MBConvOps(space)
    if isinstance(space, ResNetSpace):
        return ResNetOps(space)
    raise TypeError(f"no search hooks for space type {type(space).__name__}")
