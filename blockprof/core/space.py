"""Design spaces: one contract over a plain, hashable `Arch` value.

An arch is a tuple of units (stages), each a tuple of block tokens, plus an input
resolution. Its text form is the seed's CSV format: layers joined by `->`, units
by `|` (e.g. `mbconv3_e6_k7->mbconv3_e4_k5|...`), resolution kept apart.

`DesignSpace` holds everything generic (parsing, validation, sampling, slot
forcing, the vectorised slot encoding, per-slot cost tables, cutting a real
subnet). Each space *family* is one module under `blockprof.core.families`
that subclasses it and owns everything else about the family:

- structure: `unit_blocks`, `check_unit` (ResNet: one width per unit), `layers`
  (an arch's real layers), `fixed_layers` (stem/head per fixed variant) and
  `choice_layers` (what one encoded choice at one slot stands for), with
  `n_fixed_variants` / `n_slot_choices`;
- encodings: `_encode_tokens` (interned tokens -> `SlotEncoding`), `to_ofa` /
  `from_ofa` (OFA's arch dict), `ofa_accuracy_features` (OFA's predictor input);
- slots: `parse_slot`, `slots`, `slot_columns`, `describe`, `force`;
- `new_supernet` (the OFA supernet), `ops_class` (the search's `FamilyOps`);
- what exists beyond the structure: `capabilities` (public accuracy predictor,
  supernet checkpoint; latency tables belong to devices, which read their coverage
  from the tables' keys) and `insight_names` (insight profile files).

A space is built from keyword arguments (`name`, `resolutions`, `width_mult`,
family parameters), so a config node with `_target_: <family class>` builds it;
`build_space(name)` builds a space from its YAML file shipped in `blockprof.conf`.
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
import itertools
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.layers import Layer


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


@dataclass(frozen=True)
class AccuracyPredictorAsset:
    """A public accuracy predictor: its asset file and the resolutions its input one-hot knows."""
    asset: str
    resolutions: tuple[int, ...]


@dataclass(frozen=True)
class Capabilities:
    """What exists for a space beyond its structure; metrics and the app ask here.

    accuracy_predictor: OFA's public predictor fitting the space (None: none published).
    supernet_checkpoint: name of the published trained supernet (None: bring your own).
    """
    accuracy_predictor: AccuracyPredictorAsset | None = None
    supernet_checkpoint: str | None = None


FAMILIES: dict[str, type["DesignSpace"]] = {}


class DesignSpace(ABC):
    """Generic part of every space. Family modules fill the hooks (see the module doc); they
    are abstract, so a family that misses one fails when it is built, not at first use."""

    family: ClassVar[str] = ""
    ops_class: ClassVar[type["FamilyOps"]]
    name: str
    supernet: str
    width_mult: float | None = None  # None: the family has no global width multiplier
    hv_reference: dict  # search hypervolume reference per objective (from the space's config)
    resolutions: tuple[int, ...]
    min_layers: tuple[int, ...]
    max_layers: tuple[int, ...]
    blocks: tuple[str, ...]  # every block token of the space, in encoding order

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "family" in cls.__dict__ and cls.family:
            FAMILIES.setdefault(cls.family, cls)

    # ---- family hooks -------------------------------------------------
    @abstractmethod
    def unit_blocks(self, unit: int) -> tuple[str, ...]:
        """Every block token that may stand in `unit`."""

    def check_unit(self, unit: int, layers: Sequence[str]) -> None:
        """Family-specific consistency of one unit's layers (raise UserError)."""

    @abstractmethod
    def to_ofa(self, arch: Arch) -> dict:
        ...

    @abstractmethod
    def from_ofa(self, spec: dict) -> Arch:
        ...

    @abstractmethod
    def parse_slot(self, spec: Sequence) -> list[Slot]:
        ...

    @abstractmethod
    def slots(self) -> list[Slot]:
        ...

    @abstractmethod
    def slot_columns(self, slot: Slot | None) -> dict:
        ...

    @abstractmethod
    def describe(self, slot: Slot) -> str:
        ...

    @abstractmethod
    def force(self, arch: Arch, slot: Slot, rng: np.random.Generator) -> Arch:
        ...

    @abstractmethod
    def layers(self, arch: Arch) -> list[Layer]:
        """The arch's real layers, in order (stem and head included)."""

    @property
    @abstractmethod
    def n_fixed_variants(self) -> int:
        """How many values `SlotEncoding.fixed` takes."""

    @property
    @abstractmethod
    def n_slot_choices(self) -> int:
        """How many values `SlotEncoding.choice` takes at a slot."""

    @abstractmethod
    def fixed_layers(self, r: int, f: int) -> tuple[list[Layer], list[Layer]]:
        """Layers before and after the slots, at resolution r, for fixed variant f."""

    @abstractmethod
    def choice_layers(self, r: int, s: int, c: int) -> tuple[list[Layer], int]:
        """Layers of choice c at slot position s (empty: no such choice there) and the
        index in `blocks` of the token it stands for (-1: none)."""

    @abstractmethod
    def _encode_tokens(self, tok: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interned tokens [n, S] (index in `blocks`, -1 inactive) -> (choice, fixed)."""

    @functools.cached_property
    def _accuracy_res_index(self) -> np.ndarray:
        asset = self.capabilities.accuracy_predictor
        if asset is None:
            raise UserError(f"space {self.name} has no OFA accuracy predictor")
        bad = [r for r in self.resolutions if r not in asset.resolutions]
        if bad:
            raise UserError(f"the {self.name} accuracy predictor knows resolutions {list(asset.resolutions)}, not {bad[0]}")
        return np.array([asset.resolutions.index(r) for r in self.resolutions], dtype=np.intp)

    def ofa_accuracy_features(self, enc: SlotEncoding) -> np.ndarray:
        """OFA's accuracy-predictor input [n, features] (float32) for encoded archs."""
        raise UserError(f"space {self.name} has no OFA accuracy-predictor encoding")

    @abstractmethod
    def new_supernet(self):
        """A fresh OFA supernet for this space (random weights, eval mode)."""

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    @property
    def insight_names(self) -> tuple[str, ...]:
        """Insight profile files (conf/insight/<name>.yaml) that fit the space, preferred first."""
        return (self.name,)

    # ---- generic ------------------------------------------------------
    params: dict  # the constructor's keyword arguments, name aside

    def variant(self, **changes) -> "DesignSpace":
        """The same family with some constructor parameters changed (e.g. another width)."""
        name = changes.pop("name", self.name)
        return type(self)(name=name, **{**self.params, **changes})

    @functools.cached_property
    def ops(self) -> "FamilyOps":
        """The family's search operators (mutation, crossover, sampling over candidates)."""
        return self.ops_class(self)

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

    @functools.cached_property
    def slot_unit(self) -> np.ndarray:
        """Unit of each slot position."""
        return np.repeat(np.arange(self.n_units), self.max_layers)

    @functools.cached_property
    def slot_layer(self) -> np.ndarray:
        """Layer (within its unit) of each slot position."""
        return np.arange(self.n_slot_positions) - np.array(self.slot_offsets)[self.slot_unit]

    @functools.cached_property
    def _token_id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.blocks)}

    @functools.cached_property
    def _res_id(self) -> dict[int, int]:
        return {r: i for i, r in enumerate(self.resolutions)}

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

    def encode(self, archs: Sequence[Arch]) -> SlotEncoding:
        """Archs -> `SlotEncoding`, for the whole batch at once.

        One pass interns every token (and depth, resolution) to integers; the rest is
        numpy: layers fill their unit's slots in order (a boolean scatter), and the
        family turns token indices into its choice indices. Raises KeyError on a token
        or resolution the space lacks and ValueError on a wrong unit or layer count."""
        n, U = len(archs), self.n_units
        ti, ri = self._token_id, self._res_id
        units = list(_chain(a.units for a in archs))
        flat = np.array(list(map(ti.__getitem__, _chain(units))), dtype=np.int16)
        depth = np.fromiter(map(len, units), dtype=np.int16, count=n * U).reshape(n, U)
        res = np.fromiter((ri[a.resolution] for a in archs), dtype=np.int16, count=n)
        if (depth > np.array(self.max_layers, dtype=np.int16)).any():
            raise ValueError(f"{self.name}: a unit has more layers than the space allows")
        active = depth[:, self.slot_unit] > self.slot_layer
        tok = np.full(active.shape, -1, dtype=np.int16)
        tok[active] = flat
        choice, fixed = self._encode_tokens(tok, active)
        return SlotEncoding(choice, fixed, res)

    def cost_tables(self, layer_cost: Callable[[Layer, int], float]) -> tuple[np.ndarray, np.ndarray]:
        """(fixed[R, F], slot[R, S, C]) tables of summed `layer_cost` matching `encode`."""
        R, S, C, F = len(self.resolutions), self.n_slot_positions, self.n_slot_choices, self.n_fixed_variants
        fixed = np.zeros((R, F))
        slot = np.zeros((R, S, C))
        for ri, r in enumerate(self.resolutions):
            for f in range(F):
                before, after = self.fixed_layers(r, f)
                fixed[ri, f] = sum(layer_cost(x, r) for x in before + after)
            for s in range(S):
                for c in range(C):
                    slot[ri, s, c] = sum(layer_cost(x, r) for x in self.choice_layers(r, s, c)[0])
        return fixed, slot

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
                for slot in self.parse_slot(list(spec)):
                    if any((s.unit, s.layer) == (slot.unit, slot.layer) for s in group):
                        raise UserError(f"bad block spec {list(spec)}: the group fixes unit {slot.unit} "
                                        f"layer {slot.layer} twice")
                    group.append(slot)
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
        return self.new_supernet()

    def build_subnet(self, arch: Arch, supernet=None):
        """The real OFA subnet (an nn.Module) for `arch`, cut from `supernet`
        (default: the randomly initialised one)."""
        net = self.supernet_random if supernet is None else supernet
        self.validate(arch)
        spec = self.to_ofa(arch)
        net.set_active_subnet(**{k: v for k, v in spec.items() if k != "r"})
        sub = net.get_active_subnet(preserve_weight=True)
        return sub.eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_chain = itertools.chain.from_iterable


def _is_seq(x) -> bool:
    return isinstance(x, (list, tuple)) or (hasattr(x, "__len__") and not isinstance(x, (str, bytes)))


# ===================================================================== search operators
Unit = tuple  # a unit's layer tokens


def pick(rng: np.random.Generator, seq: Sequence):
    """One uniform element of seq."""
    return seq[int(rng.integers(len(seq)))]


class FamilyOps(ABC):
    """What the search needs to know about a family: hooks shared by the mutator, the
    samplers and the insight profiles, written over "units of layer tokens".

    Every edit is drawn with the passed `np.random.Generator`."""

    candidates_key = "unit_candidates"
    candidate_word = "block"

    def __init__(self, space: DesignSpace):
        self.space = space

    # -- candidates ----------------------------------------------------
    @abstractmethod
    def universe(self, unit: int) -> tuple:
        """Every candidate a profile may list for `unit`."""

    def parse_candidate(self, value):
        """A YAML value as a candidate (raise ValueError when it has the wrong type)."""
        return value

    @abstractmethod
    def candidate_of_row(self, row: dict):
        """The candidate a profile summary row is about, or None (rows not about a candidate)."""

    @abstractmethod
    def unit_fits(self, cands: Sequence, unit: int, layers: Unit) -> bool:
        """Whether a unit's layers use only the profile's candidates."""

    # -- sampling ------------------------------------------------------
    @abstractmethod
    def sample_units(self, cands, min_layers, max_layers, rng: np.random.Generator, n: int) -> list[list[Unit]]:
        """n random archs' units (without resolution), uniform per unit: depth, then each layer."""

    # -- random-mutation edits ------------------------------------------
    @abstractmethod
    def edits(self, cands: Sequence, unit: int, layers: Unit, lo: int, hi: int) -> list[str]:
        ...

    @abstractmethod
    def apply(self, edit: str, cands: Sequence, unit: int, layers: Unit, rng) -> Unit:
        ...

    # -- OFA-style genetic operators -----------------------------------
    @abstractmethod
    def gene_mutate(self, cands, unit: int, layers: Unit, lo: int, hi: int, p: float, rng) -> Unit:
        ...

    @abstractmethod
    def crossover(self, unit: int, a: Unit, b: Unit, rng) -> Unit:
        ...

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
    @abstractmethod
    def shrink_edits(self, cands, unit: int, layers: Unit, lo: int) -> list[str]:
        ...

    @abstractmethod
    def shrink(self, edit: str, cands, unit: int, layers: Unit, rng) -> Unit:
        ...
