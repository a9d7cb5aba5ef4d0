"""Design spaces: one contract over a plain, hashable `Arch` value.

An arch is a tuple of units (stages), each a tuple of block tokens, plus an input
resolution. Its text form is the seed's CSV format: layers joined by `->`, units
by `|` (e.g. `mbconv3_e6_k7->mbconv3_e4_k5|...`), resolution kept apart.

Two families share every generic piece (sampling, parsing, slot forcing,
batched slot encoding): `MBConvSpace` (OFA-MobileNetV3 `mbv3`, ProxylessNAS
`pn`) and `ResNetSpace` (OFA-ResNet50). A family only says which tokens exist,
how an arch maps to OFA's own encoding, and which layers a block is made of.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.layers import (
    BottleneckLayer, ConvLayer, Layer, LinearLayer, MBConvLayer, PoolLayer, conv_out, make_divisible,
)


@dataclass(frozen=True)
class Arch:
    units: tuple[tuple[str, ...], ...]
    resolution: int

    @property
    def text(self) -> str:
        return "|".join("->".join(u) for u in self.units)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(u) for u in self.units)

    def __str__(self) -> str:
        return f"{self.text}@{self.resolution}"


@dataclass(frozen=True)
class Slot:
    """A block fixed at one position: unit, layer (0-based), block token, optional resolution."""
    unit: int
    layer: int
    block: str
    resolution: int | None = None


@dataclass
class SlotEncoding:
    """Archs as integer arrays, for metrics that add one cost per active slot.

    choice[i, s] indexes the choice at slot position s (-1: layer inactive);
    fixed[i] indexes the arch's fixed part (stem/head variant); res[i] the resolution.
    """
    choice: np.ndarray
    fixed: np.ndarray
    res: np.ndarray


class DesignSpace:
    """Generic part of every space. Subclasses fill the family-specific hooks."""

    name: str
    supernet: str
    resolutions: tuple[int, ...]
    min_layers: tuple[int, ...]
    max_layers: tuple[int, ...]

    # ---- family hooks -------------------------------------------------
    def unit_blocks(self, unit: int) -> tuple[str, ...]:
        """Every block token that may stand in `unit`."""
        raise NotImplementedError

    def check_unit(self, unit: int, layers: Sequence[str]) -> None:
        """Family-specific consistency of one unit's layers (raise UserError)."""

    def to_ofa(self, arch: Arch) -> dict:
        raise NotImplementedError

    def from_ofa(self, spec: dict) -> Arch:
        raise NotImplementedError

    def parse_slot(self, spec: Sequence) -> list[Slot]:
        raise NotImplementedError

    def slots(self) -> list[Slot]:
        raise NotImplementedError

    def describe(self, slot: Slot) -> str:
        raise NotImplementedError

    def force(self, arch: Arch, slot: Slot, rng: np.random.Generator) -> Arch:
        raise NotImplementedError

    def layers(self, arch: Arch) -> list[Layer]:
        """The arch's real layers, in order (stem and head included)."""
        raise NotImplementedError

    def encode(self, archs: Sequence[Arch]) -> SlotEncoding:
        raise NotImplementedError

    def cost_tables(self, layer_cost: Callable[[Layer, int], float]) -> tuple[np.ndarray, np.ndarray]:
        """(fixed[R, F], slot[R, S, C]) tables of summed `layer_cost` matching `encode`."""
        raise NotImplementedError

    def _new_supernet(self):
        raise NotImplementedError

    # ---- generic ------------------------------------------------------
    @property
    def n_units(self) -> int:
        return len(self.max_layers)

    @property
    def n_slot_positions(self) -> int:
        return sum(self.max_layers)

    @functools.cached_property
    def slot_offsets(self) -> tuple[int, ...]:
        """Index of each unit's first layer among all slot positions."""
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.max_layers)[:-1]]))

    def check_resolution(self, r: int) -> int:
        if r not in self.resolutions:
            raise UserError(f"resolution {r} is not in space {self.name} (choose from {list(self.resolutions)})")
        return int(r)

    def validate(self, arch: Arch) -> Arch:
        if len(arch.units) != self.n_units:
            raise UserError(f"{self.name}: arch has {len(arch.units)} units, space has {self.n_units}: {arch.text}")
        for u, layers in enumerate(arch.units):
            lo, hi = self.min_layers[u], self.max_layers[u]
            if not lo <= len(layers) <= hi:
                raise UserError(f"{self.name}: unit {u} has {len(layers)} layers, allowed {lo}..{hi}: {arch.text}")
            allowed = set(self.unit_blocks(u))
            for l, tok in enumerate(layers):
                if tok not in allowed:
                    raise UserError(f"{self.name}: unknown block '{tok}' at unit {u} layer {l}")
            self.check_unit(u, layers)
        self.check_resolution(arch.resolution)
        return arch

    def parse(self, text: str, resolution: int) -> Arch:
        """Seed text format -> validated Arch."""
        text = str(text).strip()
        if not text:
            raise UserError(f"{self.name}: empty architecture string")
        units = tuple(tuple(t.strip() for t in u.split("->")) for u in text.split("|"))
        try:
            resolution = int(resolution)
        except (TypeError, ValueError):
            raise UserError(f"{self.name}: resolution '{resolution}' is not an integer") from None
        return self.validate(Arch(units, resolution))

    def sample(self, rng: np.random.Generator, n: int, resolution: int | None = None) -> list[Arch]:
        """OFA's distribution: depth and every layer's block uniform per unit, resolution uniform."""
        lo, hi = np.array(self.min_layers), np.array(self.max_layers)
        depths = rng.integers(lo, hi + 1, size=(n, self.n_units))
        cands = [self.unit_blocks(u) for u in range(self.n_units)]
        picks = [rng.integers(0, len(c), size=(n, hi[u])) for u, c in enumerate(cands)]
        res = (np.full(n, resolution) if resolution is not None
               else rng.choice(np.array(self.resolutions), size=n))
        archs = []
        for i in range(n):
            units = tuple(tuple(cands[u][j] for j in picks[u][i, :depths[i, u]]) for u in range(self.n_units))
            archs.append(self._normalise(Arch(units, int(res[i])), rng))
        return archs

    def _normalise(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """Make a freshly sampled arch consistent (ResNet: one width per unit)."""
        return arch

    def parse_slots(self, entries) -> list[list[Slot]]:
        """The seed's `--blocks` list: each entry is one spec or a list of specs fixed together."""
        entries = list(entries)
        if entries and not _is_seq(entries[0]):  # a single flat spec: [1, 0, 7, 6, 224]
            entries = [entries]
        groups = []
        for entry in entries:
            entry = list(entry) if _is_seq(entry) else [entry]
            specs = entry if entry and _is_seq(entry[0]) else [entry]
            group = []
            for spec in specs:
                group.extend(self.parse_slot(list(spec)))
            groups.append(group)
        return groups

    def force_all(self, archs: Sequence[Arch], slots: Sequence[Slot], rng: np.random.Generator) -> list[Arch]:
        out = []
        for a in archs:
            for s in slots:
                a = self.force(a, s, rng)
            out.append(a)
        return out

    def _raise_depth(self, layers: tuple[str, ...], layer: int, unit: int, rng) -> list[str]:
        """Grow a unit to at least layer+1 layers with random blocks, so `layer` is active.

        The seed compared `depth < layer` here and so left layer 3 inactive at depth 3."""
        layers = list(layers)
        cands = self.unit_blocks(unit)
        while len(layers) < layer + 1:
            layers.append(cands[int(rng.integers(len(cands)))])
        return layers

    # ---- real subnet ----------------------------------------------------
    @functools.cached_property
    def supernet_random(self):
        """The OFA supernet with its random initial weights (built once; slow)."""
        return self._new_supernet()

    def build_subnet(self, arch: Arch, supernet=None):
        """The real OFA subnet (an nn.Module) for `arch`, cut from `supernet`
        (default: the randomly initialised one)."""
        net = self.supernet_random if supernet is None else supernet
        self.validate(arch)
        spec = self.to_ofa(arch)
        net.set_active_subnet(**{k: v for k, v in spec.items() if k != "r"})
        sub = net.get_active_subnet(preserve_weight=True)
        return sub.eval()


def _is_seq(x) -> bool:
    return isinstance(x, (list, tuple)) or (hasattr(x, "__len__") and not isinstance(x, (str, bytes)))


# ===================================================================== MBConv
_MB_RE = re.compile(r"^mbconv(\d)_e(\d+)_k(\d+)$")


@dataclass(frozen=True)
class MBConvFamily:
    """Structural constants of an OFA MBConv supernet."""
    block_prefix: str           # mbconv3 (MobileNetV3) | mbconv2 (ProxylessNAS)
    stem_channels: int          # first conv output
    first_block_channels: int   # the fixed expand-1 block after the first conv
    first_block_residual: bool
    unit_widths: tuple[int, ...]
    unit_strides: tuple[int, ...]
    unit_acts: tuple[str, ...]
    unit_se: tuple[bool, ...]
    stem_act: str
    head: str                   # mbv3: final expand + pool + feature mix; pn: feature mix + pool
    final_expand: int
    last_channel: int


def _mbv3_family(width_mult: float) -> MBConvFamily:
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    md = lambda c: make_divisible(c * width_mult)  # noqa: E731
    return MBConvFamily(
        block_prefix="mbconv3", stem_channels=md(base[0]), first_block_channels=md(base[1]),
        first_block_residual=True, unit_widths=tuple(md(c) for c in base[2:7]),
        unit_strides=(2, 2, 2, 1, 2), unit_acts=("relu", "relu", "h_swish", "h_swish", "h_swish"),
        unit_se=(False, True, False, True, True), stem_act="h_swish", head="mbv3",
        final_expand=md(base[7]), last_channel=md(base[8]),
    )


def _pn_family(width_mult: float) -> MBConvFamily:
    base = [32, 16, 24, 40, 80, 96, 192, 320, 1280]
    md = lambda c: make_divisible(c * width_mult)  # noqa: E731
    return MBConvFamily(
        block_prefix="mbconv2", stem_channels=md(base[0]), first_block_channels=md(base[1]),
        first_block_residual=False, unit_widths=tuple(md(c) for c in base[2:8]),
        unit_strides=(2, 2, 2, 1, 2, 1), unit_acts=("relu6",) * 6, unit_se=(False,) * 6,
        stem_act="relu6", head="pn", final_expand=0, last_channel=md(base[8]),
    )


class MBConvSpace(DesignSpace):
    kernels = (3, 5, 7)
    expands = (3, 4, 6)

    def __init__(self, name: str, supernet: str, family: MBConvFamily, width_mult: float,
                 resolutions: Sequence[int], min_layers: Sequence[int], max_layers: Sequence[int]):
        self.name, self.supernet, self.family, self.width_mult = name, supernet, family, width_mult
        self.resolutions = tuple(int(r) for r in resolutions)
        self.min_layers, self.max_layers = tuple(min_layers), tuple(max_layers)
        # canonical block order: expansion-major, as the seed's insight lists
        self.blocks = tuple(f"{family.block_prefix}_e{e}_k{k}" for e in self.expands for k in self.kernels)
        self.block_index = {b: i for i, b in enumerate(self.blocks)}

    def unit_blocks(self, unit):
        return self.blocks

    def block_ek(self, token: str) -> tuple[int, int]:
        i = self.block_index[token]
        return self.expands[i // 3], self.kernels[i % 3]

    def block_token(self, e: int, k: int) -> str:
        return f"{self.family.block_prefix}_e{e}_k{k}"

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
        if not 4 <= len(spec) <= 5 or not all(isinstance(x, (int, np.integer)) for x in spec):
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
    def _stem_layers(self, r: int) -> list[Layer]:
        f = self.family
        h = conv_out(r, 2)
        return [ConvLayer(r, 3, f.stem_channels, 3, 2, f.stem_act),
                MBConvLayer(h, f.stem_channels, f.first_block_channels, f.stem_channels, 3, 1,
                            "relu" if f.head == "mbv3" else "relu6", False, f.first_block_residual,
                            expand_conv=False)]

    def _head_layers(self, h: int) -> list[Layer]:
        f = self.family
        c = f.unit_widths[-1]
        if f.head == "mbv3":
            return [ConvLayer(h, c, f.final_expand, 1, 1, "h_swish"), PoolLayer(h, f.final_expand),
                    ConvLayer(1, f.final_expand, f.last_channel, 1, 1, "h_swish", bn=False),
                    LinearLayer(f.last_channel, 1000)]
        return [ConvLayer(h, c, f.last_channel, 1, 1, "relu6"), PoolLayer(h, f.last_channel),
                LinearLayer(f.last_channel, 1000)]

    def unit_input_sizes(self, r: int) -> list[int]:
        h = conv_out(r, 2)
        sizes = []
        for s in self.family.unit_strides:
            sizes.append(h)
            h = conv_out(h, s)
        return sizes + [h]

    def block_layer(self, unit: int, layer: int, token: str, r: int) -> MBConvLayer:
        f = self.family
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
        out = self._stem_layers(r)
        for u, layers in enumerate(arch.units):
            out += [self.block_layer(u, j, t, r) for j, t in enumerate(layers)]
        return out + self._head_layers(self.unit_input_sizes(r)[-1])

    def encode(self, archs):
        n, S = len(archs), self.n_slot_positions
        choice = np.full((n, S), -1, dtype=np.int16)
        res = np.empty(n, dtype=np.int16)
        r_index = {r: i for i, r in enumerate(self.resolutions)}
        bi, offs = self.block_index, self.slot_offsets
        for i, a in enumerate(archs):
            res[i] = r_index[a.resolution]
            for u, layers in enumerate(a.units):
                o = offs[u]
                for j, t in enumerate(layers):
                    choice[i, o + j] = bi[t]
        return SlotEncoding(choice, np.zeros(n, dtype=np.int16), res)

    def cost_tables(self, layer_cost):
        R, S, C = len(self.resolutions), self.n_slot_positions, len(self.blocks)
        fixed = np.zeros((R, 1))
        slot = np.zeros((R, S, C))
        for ri, r in enumerate(self.resolutions):
            fixed[ri, 0] = sum(layer_cost(x, r) for x in self._stem_layers(r) + self._head_layers(self.unit_input_sizes(r)[-1]))
            for u, off in enumerate(self.slot_offsets):
                for j in range(self.max_layers[u]):
                    for c, b in enumerate(self.blocks):
                        slot[ri, off + j, c] = layer_cost(self.block_layer(u, j, b, r), r)
        return fixed, slot

    def _new_supernet(self):
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3, OFAProxylessNASNets
        cls = OFAMobileNetV3 if self.family.head == "mbv3" else OFAProxylessNASNets
        return cls(n_classes=1000, dropout_rate=0, width_mult=self.width_mult,
                   ks_list=list(self.kernels), expand_ratio_list=list(self.expands), depth_list=[2, 3, 4]).eval()


# ===================================================================== ResNet
_STEM_RE = re.compile(r"^stem_d(\d)_w(\d)_w(\d)$")
_BNECK_RE = re.compile(r"^bneck_e([0-9.]+)_w(\d)$")


class ResNetSpace(DesignSpace):
    """OFA-ResNet50. Unit 0 is the stem, one token `stem_d{0|2}_w{i}_w{j}` (d=0 skips the
    middle stem conv; i, j index the two stem widths). Units 1-4 hold bottleneck
    tokens `bneck_e{e}_w{w}`; all layers of a unit share the unit's width index w.

    Slot specs (the seed's): `[0, d]` stem depth, `[1, i, w]` stem conv i (0/1) at
    width index w, `[2, unit, layer, e, w]` bottleneck (unit 1-4) at expand e and
    unit width index w; each may end with a resolution.
    """
    expands = (0.2, 0.25, 0.35)
    width_mults = (0.65, 0.8, 1.0)
    stem_depths = (0, 2)
    base_depths = (2, 2, 4, 2)
    stage_widths = (256, 512, 1024, 2048)
    stage_strides = (1, 2, 2, 2)

    def __init__(self, name: str, supernet: str, resolutions: Sequence[int]):
        self.name, self.supernet = name, supernet
        self.resolutions = tuple(int(r) for r in resolutions)
        self.min_layers = (1,) + tuple(self.base_depths)
        self.max_layers = (1,) + tuple(d + 2 for d in self.base_depths)
        self.stem_tokens = tuple(f"stem_d{d}_w{i}_w{j}" for d in self.stem_depths for i in range(3) for j in range(3))
        self.bneck_tokens = tuple(f"bneck_e{e}_w{w}" for e in self.expands for w in range(3))
        self.stem_index = {t: i for i, t in enumerate(self.stem_tokens)}
        self.bneck_index = {t: i for i, t in enumerate(self.bneck_tokens)}
        self.stem_in = [make_divisible(make_divisible(64 * m) // 2) for m in self.width_mults]
        self.stem_out = [make_divisible(64 * m) for m in self.width_mults]
        self.widths = [[make_divisible(c * m) for m in self.width_mults] for c in self.stage_widths]

    @property
    def blocks(self):
        return self.stem_tokens + self.bneck_tokens

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
        if not spec or not all(isinstance(x, (int, float, np.integer, np.floating)) for x in spec):
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
    def _stem_layers(self, r: int, d: int, w0: int, w1: int) -> list[Layer]:
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

    def _head_layers(self, r: int, w: int) -> list[Layer]:
        h, c = self._stage_input_sizes(r)[-1], self.widths[-1][w]
        return [PoolLayer(h, c), LinearLayer(c, 1000)]

    def layers(self, arch):
        r = arch.resolution
        d, w0, w1 = self.stem(arch.units[0][0])
        out = self._stem_layers(r, d, w0, w1)
        w_prev = w1
        for u in range(1, 5):
            w = self.unit_width(arch, u)
            for j, t in enumerate(arch.units[u]):
                out.append(self.block_layer(u, j, self.bneck(t)[0], w_prev if j == 0 else w, w, r))
            w_prev = w
        return out + self._head_layers(r, w_prev)

    # slot choice = e_idx * 9 + w_in * 3 + w_out; fixed = stem_idx * 3 + last unit width
    def encode(self, archs):
        n, S = len(archs), self.n_slot_positions
        choice = np.full((n, S), -1, dtype=np.int16)
        fixed = np.empty(n, dtype=np.int16)
        res = np.empty(n, dtype=np.int16)
        r_index = {r: i for i, r in enumerate(self.resolutions)}
        e_index = {e: i for i, e in enumerate(self.expands)}
        for i, a in enumerate(archs):
            res[i] = r_index[a.resolution]
            stem = a.units[0][0]
            choice[i, 0] = self.stem_index[stem]
            w_prev = self.stem(stem)[2]
            for u in range(1, 5):
                o = self.slot_offsets[u]
                for j, t in enumerate(a.units[u]):
                    e, w = self.bneck(t)
                    choice[i, o + j] = e_index[e] * 9 + (w_prev if j == 0 else w) * 3 + w
                w_prev = self.bneck(a.units[u][0])[1]
            fixed[i] = w_prev
        return SlotEncoding(choice, fixed, res)

    def cost_tables(self, layer_cost):
        R, S = len(self.resolutions), self.n_slot_positions
        fixed = np.zeros((R, 3))
        slot = np.zeros((R, S, 27))
        for ri, r in enumerate(self.resolutions):
            for w in range(3):
                fixed[ri, w] = sum(layer_cost(x, r) for x in self._head_layers(r, w))
            for c, tok in enumerate(self.stem_tokens):  # stem lives in slot 0
                slot[ri, 0, c] = sum(layer_cost(x, r) for x in self._stem_layers(r, *self.stem(tok)))
            for u in range(1, 5):
                for j in range(self.max_layers[u]):
                    for ei, e in enumerate(self.expands):
                        for wi in range(3):
                            for wo in range(3):
                                slot[ri, self.slot_offsets[u] + j, ei * 9 + wi * 3 + wo] = \
                                    layer_cost(self.block_layer(u, j, e, wi, wo, r), r)
        return fixed, slot

    def _new_supernet(self):
        from ofa.imagenet_classification.elastic_nn.networks import OFAResNets
        return OFAResNets(n_classes=1000, dropout_rate=0, depth_list=[0, 1, 2],
                          expand_ratio_list=list(self.expands), width_mult_list=list(self.width_mults)).eval()


# ===================================================================== registry
def build_space(name: str, resolutions: Sequence[int] | None = None, width_mult: float | None = None) -> DesignSpace:
    """Space by config name: mbv3 (w1.2), mbv3_w10, pn (w1.3), resnet50."""
    if name in ("mbv3", "mbv3_w10"):
        wm = width_mult or (1.2 if name == "mbv3" else 1.0)
        return MBConvSpace(name, f"ofa_mbv3_d234_e346_k357_w{wm}", _mbv3_family(wm), wm,
                           resolutions or (160, 176, 192, 208, 224), (2,) * 5, (4,) * 5)
    if name == "pn":
        wm = width_mult or 1.3
        return MBConvSpace(name, f"ofa_proxyless_d234_e346_k357_w{wm}", _pn_family(wm), wm,
                           resolutions or (160, 176, 192, 208, 224), (2,) * 5 + (1,), (4,) * 5 + (1,))
    if name == "resnet50":
        return ResNetSpace(name, "ofa_resnet50", resolutions or (128, 144, 160, 176, 192, 224, 240, 256))
    raise UserError(f"unknown space '{name}' (choose from mbv3, mbv3_w10, pn, resnet50)")
