"""The ResNet family: OFA-ResNet50.

Unit 0 is the stem, one token `stem_d{0|2}_w{i}_w{j}` (d=0 skips the middle stem
conv; i, j index the two stem widths). Units 1-4 hold bottleneck tokens
`bneck_e{e}_w{w}`; all layers of a unit share the unit's width index w.

Slot specs (the seed's): `[0, d]` stem depth, `[1, i, w]` stem conv i (0/1) at
width index w, `[2, unit, layer, e, w]` bottleneck (unit 1-4) at expand e and
unit width index w; each may end with a resolution.

A space of the family is a YAML file:

    _target_: blockprof.core.families.resnet.ResNetSpace
    name: resnet50
    resolutions: [128, 144, 160, 176, 192, 224, 240, 256]
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.layers import BottleneckLayer, ConvLayer, Layer, LinearLayer, PoolLayer, conv_out, make_divisible
from blockprof.core.space import (
    AccuracyPredictorAsset, Arch, Capabilities, DesignSpace, FamilyOps, Slot, SlotEncoding, pick,
)

_STEM_RE = re.compile(r"^stem_d(\d)_w(\d)_w(\d)$")
_BNECK_RE = re.compile(r"^bneck_e([0-9.]+)_w(\d)$")

_SUPERNET = "ofa_resnet50"
_ACCURACY_PREDICTOR = AccuracyPredictorAsset("ofa/ofa_resnet50_acc_predictor.pth",
                                             (128, 144, 160, 176, 192, 224, 240, 256))


class ResNetSpace(DesignSpace):
    family = "resnet"
    expands = (0.2, 0.25, 0.35)
    width_mults = (0.65, 0.8, 1.0)
    stem_depths = (0, 2)
    base_depths = (2, 2, 4, 2)
    stage_widths = (256, 512, 1024, 2048)
    stage_strides = (1, 2, 2, 2)

    def __init__(self, name: str, resolutions: Sequence[int], width_mult: float | None = None,
                 supernet: str | None = None, hv_reference: dict | None = None):
        if width_mult not in (None, 1, 1.0):  # the width choices are per unit, in the tokens
            raise UserError(f"space {name}: the ResNet family takes no width_mult (got {width_mult})")
        if not resolutions:
            raise UserError(f"space {name}: resolutions is empty")
        self.name, self.supernet = str(name), supernet or _SUPERNET
        self.resolutions = tuple(int(r) for r in resolutions)
        self.hv_reference = dict(hv_reference or {})
        self.params = {"resolutions": self.resolutions, "supernet": supernet, "hv_reference": self.hv_reference}
        self.min_layers = (1,) + tuple(self.base_depths)
        self.max_layers = (1,) + tuple(d + 2 for d in self.base_depths)
        self.stem_tokens = tuple(f"stem_d{d}_w{i}_w{j}" for d in self.stem_depths for i in range(3) for j in range(3))
        self.bneck_tokens = tuple(f"bneck_e{e}_w{w}" for e in self.expands for w in range(3))
        self.stem_index = {t: i for i, t in enumerate(self.stem_tokens)}
        self.bneck_index = {t: i for i, t in enumerate(self.bneck_tokens)}
        self.blocks = self.stem_tokens + self.bneck_tokens
        self.stem_in = [make_divisible(make_divisible(64 * m) // 2) for m in self.width_mults]
        self.stem_out = [make_divisible(64 * m) for m in self.width_mults]
        self.widths = [[make_divisible(c * m) for m in self.width_mults] for c in self.stage_widths]

    @property
    def capabilities(self) -> Capabilities:
        own = self.supernet == _SUPERNET
        return Capabilities(accuracy_predictor=_ACCURACY_PREDICTOR if own else None,
                            supernet_checkpoint=_SUPERNET if own else None)

    @property
    def insight_names(self):
        return (self.name, "resnet50")

    def unit_blocks(self, unit):
        return self.stem_tokens if unit == 0 else self.bneck_tokens

    @staticmethod
    def bneck(token: str) -> tuple[float, int]:
        m = _BNECK_RE.match(token)
        return float(m.group(1)), int(m.group(2))

    @staticmethod
    def stem(token: str) -> tuple[int, int, int]:
        m = _STEM_RE.match(token)
        return int(m.group(1)), int(m.group(2)), int(m.group(3))

    def check_unit(self, unit, layers):
        if unit and len({self.bneck(t)[1] for t in layers}) > 1:
            raise UserError(f"{self.name}: unit {unit} mixes width indices {[self.bneck(t)[1] for t in layers]}; "
                            "all layers of a unit share one width")

    def unit_width(self, arch: Arch, unit: int) -> int:
        return self.bneck(arch.units[unit][0])[1]

    def _normalise(self, arch, rng):
        # one width per unit: the first layer's width index applies to the whole unit
        units = [arch.units[0]]
        for layers in arch.units[1:]:
            w = self.bneck(layers[0])[1]
            units.append(tuple(f"bneck_e{self.bneck(t)[0]}_w{w}" for t in layers))
        return Arch(tuple(units), arch.resolution)

    def to_ofa(self, arch):
        d0, w0, w1 = self.stem(arch.units[0][0])
        d, e, w = [d0], [], [w0, w1]
        for u in range(1, 5):
            layers = arch.units[u]
            d.append(len(layers) - self.base_depths[u - 1])
            w.append(self.unit_width(arch, u))
            for j in range(self.max_layers[u]):
                e.append(self.bneck(layers[j])[0] if j < len(layers) else min(self.expands))
        return {"d": d, "e": e, "w": w, "r": arch.resolution}

    def from_ofa(self, spec):
        try:
            d, e, w = list(spec["d"]), list(spec["e"]), list(spec["w"])
        except KeyError as exc:
            raise UserError(f"{self.name}: OFA spec lacks key {exc}") from None
        r = spec.get("r", spec.get("image_size"))
        r = r[0] if isinstance(r, (list, tuple)) else r
        if len(d) != 5 or len(w) != 6 or len(e) != self.n_slot_positions - 1:
            raise UserError(f"{self.name}: OFA spec needs 5 d, 6 w and 18 e values, got {len(d)}/{len(w)}/{len(e)}")
        if d[0] not in self.stem_depths or any(x not in (0, 1, 2) for x in w):
            raise UserError(f"{self.name}: bad stem depth {d[0]} or width indices {w}")
        units = [(f"stem_d{d[0]}_w{w[0]}_w{w[1]}",)]
        off = 0
        for u in range(1, 5):
            depth = self.base_depths[u - 1] + int(d[u])
            if not self.min_layers[u] <= depth <= self.max_layers[u]:
                raise UserError(f"{self.name}: unit {u} depth offset {d[u]} out of range 0..2")
            for j in range(depth):
                if e[off + j] not in self.expands:
                    raise UserError(f"{self.name}: unit {u} layer {j} expand {e[off + j]} not in {self.expands}")
            units.append(tuple(f"bneck_e{e[off + j]}_w{w[u + 1]}" for j in range(depth)))
            off += self.max_layers[u]
        return self.validate(Arch(tuple(units), int(r)))

    # --- slots: stem depth (0,0), stem widths (0,1)/(0,2), bottlenecks (u,l) ---
    def parse_slot(self, spec):
        bad = lambda why: UserError(f"bad block spec {spec}: {why}")  # noqa: E731
        if not spec or not all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) for x in spec):
            raise bad("expected numbers, e.g. [0, d], [1, i, w] or [2, unit, layer, e, w]")
        kind = int(spec[0])
        arity = {0: 2, 1: 3, 2: 5}.get(kind)
        if arity is None:
            raise bad("first entry must be 0 (stem depth), 1 (stem width) or 2 (bottleneck)")
        if len(spec) not in (arity, arity + 1):
            raise bad(f"kind {kind} takes {arity} entries (+ optional resolution)")
        r = self.check_resolution(int(spec[arity])) if len(spec) == arity + 1 else None
        if kind == 0:
            if int(spec[1]) not in self.stem_depths:
                raise bad(f"stem depth {spec[1]} not in {list(self.stem_depths)}")
            return [Slot(0, 0, f"stem_d{int(spec[1])}", r)]
        if kind == 1:
            i, w = int(spec[1]), int(spec[2])
            if i not in (0, 1) or w not in (0, 1, 2):
                raise bad("stem conv index must be 0/1 and width index 0..2")
            return [Slot(0, 1 + i, f"stem{i}_w{w}", r)]
        u, l, e, w = int(spec[1]), int(spec[2]), float(spec[3]), int(spec[4])
        if not 1 <= u <= 4:
            raise bad(f"unit {u} out of range 1..4")
        if not 0 <= l < self.max_layers[u]:
            raise bad(f"layer {l} out of range 0..{self.max_layers[u] - 1} for unit {u}")
        if e not in self.expands:
            raise bad(f"expand {e} not in {list(self.expands)}")
        if w not in (0, 1, 2):
            raise bad(f"width index {w} not in [0, 1, 2]")
        return [Slot(u, l, f"bneck_e{e}_w{w}", r)]

    def slots(self):
        out = [Slot(0, 0, f"stem_d{d}") for d in self.stem_depths]
        out += [Slot(0, 1 + i, f"stem{i}_w{w}") for i in (0, 1) for w in range(3)]
        out += [Slot(u, l, b) for u in range(1, 5) for l in range(self.max_layers[u]) for b in self.bneck_tokens]
        return out

    def slot_columns(self, slot):
        cols = {"unit": None, "layer": None, "stem_depth": None, "expand": None, "width": None}
        if slot is None:
            return cols
        cols.update(unit=slot.unit, layer=slot.layer)
        if slot.block.startswith("stem_d"):
            cols["stem_depth"] = int(slot.block[6:])
        elif slot.block.startswith("stem"):
            cols["width"] = int(slot.block.split("_w")[1])
        else:
            cols["expand"], cols["width"] = self.bneck(slot.block)
        return cols

    def describe(self, slot):
        res = f" with Resolution {slot.resolution}" if slot.resolution else ""
        b = slot.block
        if b.startswith("stem_d"):
            return f"Stem {'skipping the middle conv' if b == 'stem_d0' else 'with all three convs'}{res}"
        if b.startswith("stem"):
            i, w = int(b[4]), int(b.split("_w")[1])
            return f"Stem conv {i} at width x{self.width_mults[w]}{res}"
        e, w = self.bneck(b)
        return f"Unit {slot.unit} Layer {slot.layer} as Bottleneck e{e} at width x{self.width_mults[w]}{res}"

    def force(self, arch, slot, rng):
        units = list(arch.units)
        b = slot.block
        if slot.unit == 0:
            d, w0, w1 = self.stem(units[0][0])
            if b.startswith("stem_d"):
                d = int(b[6:])
            elif b.startswith("stem0"):
                w0 = int(b.split("_w")[1])
            else:
                w1 = int(b.split("_w")[1])
            units[0] = (f"stem_d{d}_w{w0}_w{w1}",)
        else:
            e, w = self.bneck(b)
            layers = self._raise_depth(units[slot.unit], slot.layer, slot.unit, rng)
            layers[slot.layer] = b
            units[slot.unit] = tuple(f"bneck_e{self.bneck(t)[0]}_w{w}" for t in layers)
        return Arch(tuple(units), slot.resolution or arch.resolution)

    # --- structure ---
    def stem_layers(self, r: int, d: int, w0: int, w1: int) -> list[Layer]:
        """The stem at depth d with width indices w0 (first convs) and w1 (last conv)."""
        h = conv_out(r, 2)
        c0, c1 = self.stem_in[w0], self.stem_out[w1]
        out: list[Layer] = [ConvLayer(r, 3, c0, 3, 2, "relu")]
        if d == max(self.stem_depths):
            out.append(ConvLayer(h, c0, c0, 3, 1, "relu"))
        out += [ConvLayer(h, c0, c1, 3, 1, "relu"), PoolLayer(h, c1, "maxpool", 3, 2)]
        return out

    def _stage_input_sizes(self, r: int) -> list[int]:
        h = conv_out(conv_out(r, 2), 2)
        sizes = []
        for s in self.stage_strides:
            sizes.append(h)
            h = conv_out(h, s)
        return sizes + [h]

    def block_layer(self, unit: int, layer: int, e: float, w_in: int, w_out: int, r: int) -> BottleneckLayer:
        s = unit - 1
        h = self._stage_input_sizes(r)[s]
        if layer == 0:
            c_in = self.stem_out[w_in] if s == 0 else self.widths[s - 1][w_in]
            stride = self.stage_strides[s]
        else:
            c_in, stride, h = self.widths[s][w_out], 1, conv_out(h, self.stage_strides[s])
        c_out = self.widths[s][w_out]
        return BottleneckLayer(h, c_in, c_out, make_divisible(round(c_out * e)), stride)

    def head_layers(self, r: int, w: int) -> list[Layer]:
        """Pool and classifier after a last unit of width index w."""
        h, c = self._stage_input_sizes(r)[-1], self.widths[-1][w]
        return [PoolLayer(h, c), LinearLayer(c, 1000)]

    def layers(self, arch):
        r = arch.resolution
        d, w0, w1 = self.stem(arch.units[0][0])
        out = self.stem_layers(r, d, w0, w1)
        w_prev = w1
        for u in range(1, 5):
            w = self.unit_width(arch, u)
            for j, t in enumerate(arch.units[u]):
                out.append(self.block_layer(u, j, self.bneck(t)[0], w_prev if j == 0 else w, w, r))
            w_prev = w
        return out + self.head_layers(r, w_prev)

    # --- encoding: slot 0 choice = stem token index; bottleneck choice = e_idx * 9 +
    # w_in * 3 + w_out; fixed = the last unit's width (it sets the head) ---
    n_fixed_variants = 3
    n_slot_choices = 27

    def fixed_layers(self, r, f):
        return [], self.head_layers(r, f)

    def choice_layers(self, r, s, c):
        if s == 0:
            if c >= len(self.stem_tokens):
                return [], -1
            return self.stem_layers(r, *self.stem(self.stem_tokens[c])), c
        u, j = int(self.slot_unit[s]), int(self.slot_layer[s])
        e_idx, wi, wo = c // 9, (c // 3) % 3, c % 3
        return [self.block_layer(u, j, self.expands[e_idx], wi, wo, r)], len(self.stem_tokens) + e_idx * 3 + wo

    def _encode_tokens(self, tok, active):
        n_stem = len(self.stem_tokens)
        b = tok.astype(np.int16) - n_stem                       # bottleneck index e_idx * 3 + w
        e_idx, w = b // 3, b % 3
        offs = self.slot_offsets
        stem_w1 = tok[:, 0] % 3                                  # stem token index = d * 9 + i * 3 + j
        first_w = w[:, list(offs[1:])]                           # each unit's first layer's width
        w_prev = np.concatenate([stem_w1[:, None], first_w[:, :-1]], axis=1)  # input width of units 1-4
        units = self.slot_unit[1:] - 1
        w_in = np.where(self.slot_layer[1:] == 0, w_prev[:, units], w[:, 1:])
        choice = np.empty_like(tok)
        choice[:, 0] = tok[:, 0]
        choice[:, 1:] = np.where(active[:, 1:], e_idx[:, 1:] * 9 + w_in * 3 + w[:, 1:], -1)
        return choice, first_w[:, -1].astype(np.int16)

    def ofa_accuracy_features(self, enc: SlotEncoding) -> np.ndarray:
        """OFA's ResNet50 predictor input (its ResNetArchEncoder): resolution one-hot (8),
        stem depth (2), six width one-hots of 3 (stem conv 0, stem conv 1, units 1-4),
        then an expand one-hot per bottleneck slot (18 x 3)."""
        res_col = self._accuracy_res_index
        n = len(enc.res)
        x = np.zeros((n, 82), dtype=np.float32)
        ar = np.arange(n)
        x[ar, res_col[enc.res]] = 1
        stem = enc.choice[:, 0].astype(np.intp)
        d = np.array(self.stem_depths)[stem // 9]
        x[ar, 8 + (d > 0)] = 1
        x[ar, 10 + (stem // 3) % 3] = 1
        x[ar, 13 + stem % 3] = 1
        for u in range(1, 5):  # a unit's width = w_out of its first layer
            first = enc.choice[:, self.slot_offsets[u]].astype(np.intp)
            x[ar, 10 + 3 * (u + 1) + first % 3] = 1
        rows, slots = np.nonzero(enc.choice[:, 1:] >= 0)
        e_idx = enc.choice[rows, slots + 1] // 9
        x[rows, 28 + slots * 3 + e_idx] = 1
        return x

    def new_supernet(self):
        from ofa.imagenet_classification.elastic_nn.networks import OFAResNets
        return OFAResNets(n_classes=1000, dropout_rate=0, depth_list=[0, 1, 2],
                          expand_ratio_list=list(self.expands), width_mult_list=list(self.width_mults)).eval()


# ===================================================================== search operators
class ResNetOps(FamilyOps):
    """A unit's candidates are width indices (the profile's `unit_width_indices`). Unit 0
    is the stem: edits toggle its depth or redraw its two widths. Units 1-4: add or
    remove a layer, swap one layer's expansion, or swap the unit's width."""

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
                i, j = pick(rng, self._stem_pairs(cands, (i, j)))
            else:
                raise ValueError(f"unknown stem edit {edit}")
            return (self._stem(d, i, j),)
        layers = list(layers)
        w = sp.bneck(layers[0])[1]
        if edit == "add":
            layers.insert(int(rng.integers(len(layers) + 1)), self._bneck(pick(rng, sp.expands), w))
        elif edit == "remove":
            layers.pop(int(rng.integers(len(layers))))
        elif edit == "swap_e":
            j = int(rng.integers(len(layers)))
            e = sp.bneck(layers[j])[0]
            layers[j] = self._bneck(pick(rng, [x for x in sp.expands if x != e]), w)
        elif edit == "swap_w":
            w = pick(rng, [c for c in cands if c != w])
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
                d = pick(rng, sp.stem_depths)
            if rng.random() < p:
                i = pick(rng, cands)
            if rng.random() < p:
                j = pick(rng, cands)
            return (self._stem(d, i, j),)
        es = [sp.bneck(t)[0] for t in layers]
        w = sp.bneck(layers[0])[1]
        if w not in cands or rng.random() < p:
            w = pick(rng, cands)
        if lo < hi and rng.random() < p:
            d = int(rng.integers(lo, hi + 1))
            while len(es) < d:
                es.append(pick(rng, sp.expands))
            del es[d:]
        es = [pick(rng, sp.expands) if rng.random() < p else e for e in es]
        return tuple(self._bneck(e, w) for e in es)

    def crossover(self, unit, a, b, rng):
        sp = self.sp
        if unit == 0:
            (da, ia, ja), (db, ib, jb) = sp.stem(a[0]), sp.stem(b[0])
            either = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
            return (self._stem(either(da, db), either(ia, ib), either(ja, jb)),)
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


ResNetSpace.ops_class = ResNetOps
