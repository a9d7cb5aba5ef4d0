"""The MBConv family: OFA's MobileNetV3 and ProxylessNAS supernets.

Units of 2-4 MBConv layers (ProxylessNAS: a last unit of one), each layer one
block token `mbconv{3|2}_e{expand}_k{kernel}`; a fixed stem (conv + expand-1
block) and head. Spaces of the family differ by backbone, width multiplier and
resolutions, so a new one is a YAML file:

    _target_: blockprof.core.families.mbconv.MBConvSpace
    name: mbv3_small
    backbone: mobilenetv3        # mobilenetv3 | proxyless
    width_mult: 1.2
    resolutions: [160, 176]

(`MobileNetV3Space` / `ProxylessSpace` fix the backbone, for configs without that key.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.layers import ConvLayer, Layer, LinearLayer, MBConvLayer, PoolLayer, conv_out, make_divisible
from blockprof.core.space import (
    AccuracyPredictorAsset, Arch, Capabilities, DesignSpace, FamilyOps, SlotEncoding, Slot, Unit, pick,
)


@dataclass(frozen=True)
class MBConvBackbone:
    """Structural constants of an OFA MBConv supernet at one width."""
    key: str                    # mobilenetv3 | proxyless
    block_prefix: str           # mbconv3 (MobileNetV3) | mbconv2 (ProxylessNAS)
    stem_channels: int          # first conv output
    first_block_channels: int   # the fixed expand-1 block after the first conv
    first_block_residual: bool
    first_block_act: str
    unit_widths: tuple[int, ...]
    unit_strides: tuple[int, ...]
    unit_acts: tuple[str, ...]
    unit_se: tuple[bool, ...]
    stem_act: str
    final_expand: int           # MobileNetV3 only: the 1x1 conv before pooling (0: none)
    last_channel: int
    min_layers: tuple[int, ...]
    max_layers: tuple[int, ...]
    supernet_prefix: str
    insight: str                # the insight profile file every width of the backbone shares


def _mobilenetv3(width_mult: float) -> MBConvBackbone:
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    md = lambda c: make_divisible(c * width_mult)  # noqa: E731
    return MBConvBackbone(
        key="mobilenetv3", block_prefix="mbconv3", stem_channels=md(base[0]), first_block_channels=md(base[1]),
        first_block_residual=True, first_block_act="relu", unit_widths=tuple(md(c) for c in base[2:7]),
        unit_strides=(2, 2, 2, 1, 2), unit_acts=("relu", "relu", "h_swish", "h_swish", "h_swish"),
        unit_se=(False, True, False, True, True), stem_act="h_swish",
        final_expand=md(base[7]), last_channel=md(base[8]),
        min_layers=(2,) * 5, max_layers=(4,) * 5, supernet_prefix="ofa_mbv3_d234_e346_k357", insight="mbv3",
    )


def _proxyless(width_mult: float) -> MBConvBackbone:
    base = [32, 16, 24, 40, 80, 96, 192, 320, 1280]
    md = lambda c: make_divisible(c * width_mult)  # noqa: E731
    return MBConvBackbone(
        key="proxyless", block_prefix="mbconv2", stem_channels=md(base[0]), first_block_channels=md(base[1]),
        first_block_residual=False, first_block_act="relu6", unit_widths=tuple(md(c) for c in base[2:8]),
        unit_strides=(2, 2, 2, 1, 2, 1), unit_acts=("relu6",) * 6, unit_se=(False,) * 6,
        stem_act="relu6", final_expand=0, last_channel=md(base[8]),
        min_layers=(2,) * 5 + (1,), max_layers=(4,) * 5 + (1,), supernet_prefix="ofa_proxyless_d234_e346_k357",
        insight="pn",
    )


BACKBONES = {"mobilenetv3": _mobilenetv3, "proxyless": _proxyless}

# What OFA published, by (backbone, width): trained supernets and the MobileNetV3 w1.2
# accuracy predictor. Latency tables are a device's data: what a table covers is read
# from its keys (blockprof.metrics.lut), never declared here.
_SUPERNETS = {("mobilenetv3", 1.0), ("mobilenetv3", 1.2), ("proxyless", 1.3)}
_ACCURACY_PREDICTORS = {("mobilenetv3", 1.2): AccuracyPredictorAsset(
    "ofa/acc_predictor.pth", (112, 128, 144, 160, 176, 192, 208, 224))}


class MBConvSpace(DesignSpace):
    family = "mbconv"
    kernels = (3, 5, 7)
    expands = (3, 4, 6)
    default_backbone = "mobilenetv3"

    def __init__(self, name: str, resolutions: Sequence[int], width_mult: float | None = None,
                 backbone: str | None = None, supernet: str | None = None, hv_reference: dict | None = None):
        backbone = backbone or self.default_backbone
        if backbone not in BACKBONES:
            raise UserError(f"space {name}: unknown MBConv backbone '{backbone}' (choose from {list(BACKBONES)})")
        wm = float(width_mult) if width_mult is not None else 1.0
        if not 0 < wm <= 4:
            raise UserError(f"space {name}: width_mult {width_mult} outside (0, 4]")
        if not resolutions:
            raise UserError(f"space {name}: resolutions is empty")
        self.name, self.width_mult, self.backbone = str(name), wm, BACKBONES[backbone](wm)
        self.supernet = supernet or f"{self.backbone.supernet_prefix}_w{wm}"
        self.resolutions = tuple(int(r) for r in resolutions)
        self.min_layers, self.max_layers = self.backbone.min_layers, self.backbone.max_layers
        self.hv_reference = dict(hv_reference or {})
        self.params = {"resolutions": self.resolutions, "width_mult": wm, "backbone": backbone, "supernet": supernet,
                       "hv_reference": self.hv_reference}
        # canonical block order: expansion-major, as the seed's insight lists
        self.blocks = tuple(f"{self.backbone.block_prefix}_e{e}_k{k}" for e in self.expands for k in self.kernels)
        self.block_index = {b: i for i, b in enumerate(self.blocks)}

    @property
    def capabilities(self) -> Capabilities:
        key = (self.backbone.key, self.width_mult)
        return Capabilities(
            accuracy_predictor=_ACCURACY_PREDICTORS.get(key),
            supernet_checkpoint=self.supernet if key in _SUPERNETS else None)

    @property
    def insight_names(self):
        return (self.name, self.backbone.insight)

    def unit_blocks(self, unit):
        return self.blocks

    def block_ek(self, token: str) -> tuple[int, int]:
        i = self.block_index[token]
        return self.expands[i // 3], self.kernels[i % 3]

    def block_token(self, e: int, k: int) -> str:
        return f"{self.backbone.block_prefix}_e{e}_k{k}"

    # --- OFA encoding: 4 slots per unit (ProxylessNAS's last unit: 1) ---
    def to_ofa(self, arch: Arch) -> dict:
        ks, es, ds = [], [], []
        for u, layers in enumerate(arch.units):
            for j in range(self.max_layers[u]):
                e, k = self.block_ek(layers[j]) if j < len(layers) else (min(self.expands), min(self.kernels))
                ks.append(k)
                es.append(e)
            ds.append(len(layers))
        return {"ks": ks, "e": es, "d": ds, "r": arch.resolution}

    def from_ofa(self, spec: dict) -> Arch:
        try:
            ks, es, ds = list(spec["ks"]), list(spec["e"]), list(spec["d"])
        except KeyError as exc:
            raise UserError(f"{self.name}: OFA spec lacks key {exc}") from None
        r = spec.get("r", spec.get("image_size"))
        r = r[0] if isinstance(r, (list, tuple)) else r
        if len(ds) != self.n_units or len(ks) != self.n_slot_positions or len(es) != self.n_slot_positions:
            raise UserError(f"{self.name}: OFA spec needs {self.n_units} depths and "
                            f"{self.n_slot_positions} ks/e values, got {len(ds)}/{len(ks)}/{len(es)}")
        units = []
        for u, off in enumerate(self.slot_offsets):
            d = int(ds[u])
            if not self.min_layers[u] <= d <= self.max_layers[u]:
                raise UserError(f"{self.name}: unit {u} depth {d} outside {self.min_layers[u]}..{self.max_layers[u]}")
            layers = []
            for j in range(d):
                k, e = int(ks[off + j]), int(es[off + j])
                if k not in self.kernels or e not in self.expands:
                    raise UserError(f"{self.name}: unit {u} layer {j} has kernel {k} expand {e}, "
                                    f"allowed kernels {self.kernels} expands {self.expands}")
                layers.append(self.block_token(e, k))
            units.append(tuple(layers))
        return self.validate(Arch(tuple(units), int(r)))

    # --- slots ---
    def parse_slot(self, spec):
        if not 4 <= len(spec) <= 5 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in spec):
            raise UserError(f"bad block spec {spec}: expected [unit, layer, kernel, expand] or [unit, layer, kernel, expand, resolution] of integers")
        u, l, k, e = (int(x) for x in spec[:4])
        if not 0 <= u < self.n_units:
            raise UserError(f"bad block spec {spec}: unit {u} out of range 0..{self.n_units - 1}")
        if not 0 <= l < self.max_layers[u]:
            raise UserError(f"bad block spec {spec}: layer {l} out of range 0..{self.max_layers[u] - 1} for unit {u}")
        if k not in self.kernels:
            raise UserError(f"bad block spec {spec}: kernel {k} not in {list(self.kernels)}")
        if e not in self.expands:
            raise UserError(f"bad block spec {spec}: expand {e} not in {list(self.expands)}")
        r = self.check_resolution(int(spec[4])) if len(spec) == 5 else None
        return [Slot(u, l, self.block_token(e, k), r)]

    def slots(self):
        return [Slot(u, l, b) for u in range(self.n_units) for l in range(self.max_layers[u]) for b in self.blocks]

    def slot_columns(self, slot: Slot | None) -> dict:
        if slot is None:
            return {"unit": None, "layer": None, "kernel": None, "expand": None}
        e, k = self.block_ek(slot.block)
        return {"unit": slot.unit, "layer": slot.layer, "kernel": k, "expand": e}

    def describe(self, slot):
        e, k = self.block_ek(slot.block)
        res = f" with Resolution {slot.resolution}" if slot.resolution else ""
        return f"Unit {slot.unit} Layer {slot.layer} as MBConv{e}_{k}x{k}{res}"

    def force(self, arch, slot, rng):
        units = list(arch.units)
        layers = self._raise_depth(units[slot.unit], slot.layer, slot.unit, rng)
        layers[slot.layer] = slot.block
        units[slot.unit] = tuple(layers)
        return Arch(tuple(units), slot.resolution or arch.resolution)

    # --- structure ---
    def stem_layers(self, r: int) -> list[Layer]:
        """First conv and the fixed expand-1 block."""
        f = self.backbone
        h = conv_out(r, 2)
        return [ConvLayer(r, 3, f.stem_channels, 3, 2, f.stem_act),
                MBConvLayer(h, f.stem_channels, f.first_block_channels, f.stem_channels, 3, 1,
                            f.first_block_act, False, f.first_block_residual, expand_conv=False)]

    def head_layers(self, r: int) -> list[Layer]:
        """Layers after the last unit, at input resolution r."""
        f = self.backbone
        h = self.unit_input_sizes(r)[-1]
        c = f.unit_widths[-1]
        if f.final_expand:  # MobileNetV3: final expand, pool, feature mix (no BN), classifier
            return [ConvLayer(h, c, f.final_expand, 1, 1, "h_swish"), PoolLayer(h, f.final_expand),
                    ConvLayer(1, f.final_expand, f.last_channel, 1, 1, "h_swish", bn=False),
                    LinearLayer(f.last_channel, 1000)]
        return [ConvLayer(h, c, f.last_channel, 1, 1, "relu6"), PoolLayer(h, f.last_channel),
                LinearLayer(f.last_channel, 1000)]

    def unit_input_sizes(self, r: int) -> list[int]:
        h = conv_out(r, 2)
        sizes = []
        for s in self.backbone.unit_strides:
            sizes.append(h)
            h = conv_out(h, s)
        return sizes + [h]

    def block_layer(self, unit: int, layer: int, token: str, r: int) -> MBConvLayer:
        f = self.backbone
        e, k = self.block_ek(token)
        h = self.unit_input_sizes(r)[unit]
        if layer > 0:
            h = conv_out(h, f.unit_strides[unit])
        c_in = (f.unit_widths[unit - 1] if unit else f.first_block_channels) if layer == 0 else f.unit_widths[unit]
        stride = f.unit_strides[unit] if layer == 0 else 1
        c_out = f.unit_widths[unit]
        return MBConvLayer(h, c_in, c_out, make_divisible(round(c_in * e)), k, stride, f.unit_acts[unit],
                           f.unit_se[unit], residual=(stride == 1 and c_in == c_out))

    def layers(self, arch):
        r = arch.resolution
        out = self.stem_layers(r)
        for u, layers in enumerate(arch.units):
            out += [self.block_layer(u, j, t, r) for j, t in enumerate(layers)]
        return out + self.head_layers(r)

    # --- encoding: choice = index in `blocks`; one fixed variant (stem + head) ---
    n_fixed_variants = 1

    @property
    def n_slot_choices(self) -> int:
        return len(self.blocks)

    def fixed_layers(self, r, f):
        return self.stem_layers(r), self.head_layers(r)

    def choice_layers(self, r, s, c):
        u, j = int(self.slot_unit[s]), int(self.slot_layer[s])
        return [self.block_layer(u, j, self.blocks[c], r)], c

    def _encode_tokens(self, tok, active):
        return tok, np.zeros(len(tok), dtype=np.int16)

    def ofa_accuracy_features(self, enc: SlotEncoding) -> np.ndarray:
        """OFA's MobileNetV3 predictor input: per slot a kernel one-hot, then per slot an
        expand one-hot (zeros where inactive), then a resolution one-hot."""
        n, S = enc.choice.shape
        res_col = self._accuracy_res_index
        x = np.zeros((n, 6 * S + len(self.capabilities.accuracy_predictor.resolutions)), dtype=np.float32)
        rows, slots = np.nonzero(enc.choice >= 0)
        b = enc.choice[rows, slots].astype(np.intp)
        x[rows, slots * 3 + b % 3] = 1
        x[rows, 3 * S + slots * 3 + b // 3] = 1
        x[np.arange(n), 6 * S + res_col[enc.res]] = 1
        return x

    def new_supernet(self):
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3, OFAProxylessNASNets
        cls = OFAMobileNetV3 if self.backbone.key == "mobilenetv3" else OFAProxylessNASNets
        return cls(n_classes=1000, dropout_rate=0, width_mult=self.width_mult,
                   ks_list=list(self.kernels), expand_ratio_list=list(self.expands), depth_list=[2, 3, 4]).eval()


class MobileNetV3Space(MBConvSpace):
    """OFA-MobileNetV3 (`backbone: mobilenetv3`)."""
    default_backbone = "mobilenetv3"

    def __init__(self, name: str, resolutions: Sequence[int], width_mult: float | None = None,
                 supernet: str | None = None, hv_reference: dict | None = None, backbone: str | None = None):
        if backbone not in (None, self.default_backbone):
            raise UserError(f"space {name}: {type(self).__name__} is backbone {self.default_backbone}, not {backbone}")
        super().__init__(name, resolutions, width_mult, self.default_backbone, supernet, hv_reference)


class ProxylessSpace(MobileNetV3Space):
    """OFA-ProxylessNAS (`backbone: proxyless`)."""
    default_backbone = "proxyless"


# ===================================================================== search operators
class MBConvOps(FamilyOps):
    """A unit's candidates are block tokens (`mbconv3_e6_k7`); edits add, remove or
    swap a layer's block."""

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
            layers.insert(int(rng.integers(len(layers) + 1)), pick(rng, cands))
        elif edit == "remove":
            layers.pop(int(rng.integers(len(layers))))
        elif edit == "swap":  # one layer to another candidate of the unit
            where = [j for j, t in enumerate(layers) if len(cands) > 1 or t != cands[0]]
            j = pick(rng, where)
            others = [c for c in cands if c != layers[j]]
            layers[j] = pick(rng, others)
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
        pick_ = cidx[urange, np.minimum((Q[..., 4] * n_c[None, :, None]).astype(np.int64), n_c[None, :, None] - 1)]
        b = np.where(blk >= 0, blk, pick_)  # a grown layer starts as a random candidate
        nk, ne = len(sp.kernels), len(sp.expands)
        k = np.where(Q[..., 0] < p, np.minimum((Q[..., 1] * nk).astype(np.int64), nk - 1), b % nk)
        e = np.where(Q[..., 2] < p, np.minimum((Q[..., 3] * ne).astype(np.int64), ne - 1), b // nk)
        b = e * nk + k
        b = np.where(allowed[urange, b], b, pick_)
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


MBConvSpace.ops_class = MBConvOps
