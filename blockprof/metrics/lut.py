"""Latency from per-layer lookup tables, with what a table covers read from its keys.

A lookup-table device points at one or more tables (`device.latency.table`): a folder of
per-resolution files `{r}_lookup_table.yaml` (OFA's Note10 layout) or a single YAML file
(ProxylessNAS's mobile table). Two key formats exist:

- `ofa`: OFA's MobileNetV3 keys (`expanded_conv-input:HxWxC-output:HxWxC-expand:<mid>-
  kernel:K-stride:S-idskip:I-se:S-hs:H`, `Conv`, `Conv_1`, `Conv_2`, `AvgPool2D`, `Logits`);
- `proxyless`: ProxylessNAS's keys (`expand:<ratio>`, no se/hs; `Logits` on the 7x7 map
  covers pooling and the classifier).

Channels and feature-map sizes are part of every key, so a table serves exactly the
spaces, widths and resolutions whose layers it holds: nothing about coverage is declared
in space code. A space is served by the first table that holds every layer it can have
at every resolution; otherwise the error names the first missing layer.

`transfer: macs` serves other widths and resolutions of the network a table was measured
for (ProxylessNAS's table: w1.0 at 224 px, expansions 3 and 6): each layer is mapped to
the same position of that reference network, whose width and resolution are read from
the table, and its entry scaled by the MAC ratio (a missing expansion is interpolated
between the ones measured). An estimate, not a measurement.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blockprof.common.assets import ASSETS, load_yaml_asset
from blockprof.common.errors import UserError
from blockprof.core.layers import ConvLayer, Layer, LinearLayer, MBConvLayer, PoolLayer, layer_macs
from blockprof.core.space import DesignSpace
from blockprof.metrics.base import AdditiveMetric

log = logging.getLogger(__name__)

ASSET_PREFIX = "asset:"      # `asset:ofa/note10` names a published, checksummed table
FORMATS = ("auto", "ofa", "proxyless")
TRANSFERS = ("none", "macs")
_FILE_RE = re.compile(r"^(\d+)_lookup_table\.ya?ml$")
_STEM_RE = re.compile(r"^Conv-input:(\d+)x(\d+)x3-")


def _shape(*dims) -> str:
    return "x".join(str(d) for d in dims)


def note10_key(layer: Layer) -> str:
    """OFA's (Note10 table) key of one MobileNetV3 layer."""
    if isinstance(layer, ConvLayer):
        role = "Conv" if layer.c_in == 3 else ("Conv_2" if layer.h_in == 1 else "Conv_1")
        return (f"{role}-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}")
    if isinstance(layer, MBConvLayer):
        return (f"expanded_conv-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}-expand:{layer.mid}"
                f"-kernel:{layer.kernel}-stride:{layer.stride}-idskip:{int(layer.residual)}"
                f"-se:{int(layer.se)}-hs:{int(layer.act == 'h_swish')}")
    if isinstance(layer, PoolLayer):
        return f"AvgPool2D-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}-output:{_shape(1, 1, layer.c_in)}"
    if isinstance(layer, LinearLayer):
        return f"Logits-input:{_shape(1, 1, layer.c_in)}-output:{layer.c_out}"
    raise TypeError(layer)


def proxyless_key(layer: Layer, expand: int | None = None) -> str | None:
    """ProxylessNAS's key of one layer (None: the table has no entry of its own, pooling)."""
    if isinstance(layer, ConvLayer):
        role = "Conv" if layer.c_in == 3 else "Conv_1"
        return (f"{role}-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}")
    if isinstance(layer, MBConvLayer):
        e = expand if expand is not None else (1 if not layer.expand_conv else round(layer.mid / layer.c_in))
        return (f"expanded_conv-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}-expand:{e}"
                f"-kernel:{layer.kernel}-stride:{layer.stride}-idskip:{int(layer.residual)}")
    if isinstance(layer, PoolLayer):
        return None  # the Logits entry covers pooling + classifier
    if isinstance(layer, LinearLayer):
        return f"Logits-input:7x7x{layer.c_in}-output:{layer.c_out}"
    raise TypeError(layer)


KEY_FUNCTIONS: dict[str, Callable[[Layer], str | None]] = {"ofa": note10_key, "proxyless": proxyless_key}


# ------------------------------------------------------------------ reading tables
@dataclass
class Table:
    """One table source: resolution -> {key: entry}, its key format and where it came from."""
    origin: str
    format: str
    transfer: str
    files: dict[int, Callable[[], dict]]   # resolution -> loader (files are read on first use)

    def at(self, r: int) -> dict:
        return self.files[r]()

    @property
    def resolutions(self) -> list[int]:
        return sorted(self.files)

    def describe(self) -> str:
        res = ", ".join(str(r) for r in self.resolutions)
        return f"{self.origin} ({self.format} keys, {res} px{', MAC transfer' if self.transfer == 'macs' else ''})"


def _plain_yaml(path: Path) -> dict:
    """A user's table: read as data (safe loader); no checksum, it is not a published file.
    Cached per (file, size, mtime): a run checks coverage and then builds the metric."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UserError(f"lookup table {path}: cannot read it ({exc.strerror})") from None
    return _read_yaml(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_yaml(path_s: str, size: int, mtime: int) -> dict:
    import yaml
    path = Path(path_s)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"lookup table {path}: cannot read it ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"lookup table {path}: expected a mapping of layer keys to entries with 'mean'")
    return data


def _resolution_of(data: dict, where: str) -> int:
    """A table's input resolution, from its first convolution's key (`Conv-input:RxRx3-...`)."""
    for k in data:
        m = _STEM_RE.match(str(k))
        if m:
            return int(m.group(1))
    raise UserError(f"lookup table {where}: no first-convolution key 'Conv-input:<r>x<r>x3-output:...' "
                    "to read its resolution from")


def _detect_format(data: dict, where: str) -> str:
    for k in data:
        k = str(k)
        if k.startswith("expanded_conv-"):
            return "ofa" if "-se:" in k else "proxyless"
    raise UserError(f"lookup table {where}: no 'expanded_conv-...' key to tell its format; set "
                    "device.latency.format (ofa | proxyless)")


def _memo(fn: Callable[[], dict]) -> Callable[[], dict]:
    box: list = []

    def get():
        if not box:
            box.append(fn())
        return box[0]
    return get


def _checked(load: Callable[[], dict], where: str, r: int | None) -> Callable[[], dict]:
    """The file's own keys must agree with the resolution its name gives."""
    def get():
        data = load()
        own = _resolution_of(data, where)
        if r is not None and own != r:
            raise UserError(f"lookup table {where}: named for {r} px but its first convolution takes {own} px")
        return data
    return _memo(get)


def open_table(spec, fmt: str = "auto", transfer: str = "none") -> Table:
    """One table source from the device config: a path, `asset:<published path>`, or a
    mapping {path, format, transfer} that overrides the device-wide format and transfer."""
    if isinstance(spec, dict) or hasattr(spec, "keys"):
        spec = dict(spec)
        unknown = set(spec) - {"path", "format", "transfer"}
        if unknown or "path" not in spec:
            raise UserError(f"device.latency.table entry {spec}: expected keys path, format, transfer")
        fmt, transfer = spec.get("format") or fmt, spec.get("transfer") or transfer
        spec = spec["path"]
    if fmt not in FORMATS:
        raise UserError(f"device.latency.format '{fmt}' unknown (choose from {list(FORMATS)})")
    if transfer not in TRANSFERS:
        raise UserError(f"device.latency.transfer '{transfer}' unknown (choose from {list(TRANSFERS)})")
    spec = str(spec)
    files: dict[int, Callable[[], dict]] = {}
    if spec.startswith(ASSET_PREFIX):
        rel = spec[len(ASSET_PREFIX):].strip("/")
        if rel in ASSETS:  # one published file
            load = _memo(lambda: load_yaml_asset(rel))
            files[-1] = load
        else:  # a published folder of per-resolution files
            for a in ASSETS:
                folder, _, name = a.rpartition("/")
                m = _FILE_RE.match(name)
                if folder == rel and m:
                    files[int(m.group(1))] = _checked(lambda a=a: load_yaml_asset(a), a, int(m.group(1)))
        if not files:
            raise UserError(f"device.latency.table {spec}: no published table of that name "
                            f"(published: {', '.join(sorted(ASSETS))})")
    else:
        p = Path(spec).expanduser()
        if p.is_dir():
            for f in sorted(p.iterdir()):
                m = _FILE_RE.match(f.name)
                if m:
                    files[int(m.group(1))] = _checked(lambda f=f: _plain_yaml(f), str(f), int(m.group(1)))
            if not files:
                raise UserError(f"device.latency.table {p}: the folder holds no <resolution>_lookup_table.yaml file")
        elif p.is_file():
            files[-1] = _memo(lambda: _plain_yaml(p))
        else:
            raise UserError(f"device.latency.table {p} does not exist (a folder of <resolution>_lookup_table.yaml "
                            "files or one YAML table)")
    if -1 in files:  # a single file: its resolution comes from its keys
        load = files.pop(-1)
        files[_resolution_of(load(), spec)] = load
    if fmt == "auto":
        first = files[min(files)]
        fmt = _detect_format(first(), spec)
    return Table(spec, fmt, transfer, files)


def open_tables(table, fmt: str = "auto", transfer: str = "none") -> list[Table]:
    """Every table source of a device (`table` is one source or a list of them)."""
    if table is None:
        raise UserError("device.latency.table is not set: a lookup-table device needs a folder of "
                        "<resolution>_lookup_table.yaml files, a YAML table, or asset:<published table>")
    items = list(table) if isinstance(table, (list, tuple)) or (hasattr(table, "__iter__")
                                                                 and not isinstance(table, str)
                                                                 and not hasattr(table, "keys")) else [table]
    if not items:
        raise UserError("device.latency.table is an empty list")
    return [open_table(t, fmt, transfer) for t in items]


# ------------------------------------------------------------------ coverage
def _all_layers(space: DesignSpace, r: int):
    """Every layer the space can have at resolution r (stem/head variants, every slot choice)."""
    for f in range(space.n_fixed_variants):
        before, after = space.fixed_layers(r, f)
        yield from before + after
    for s in range(space.n_slot_positions):
        for c in range(space.n_slot_choices):
            yield from space.choice_layers(r, s, c)[0]


def _entry(table: dict, key: str) -> float | None:
    e = table.get(key)
    if isinstance(e, dict) and "mean" in e:
        return float(e["mean"])
    return None


def _space_label(space: DesignSpace, r: int | None = None) -> str:
    width = f" width {float(space.width_mult)}" if space.width_mult is not None else ""
    return f"space {space.name} ({space.family}{width}{f', {r} px' if r else ''})"


class LUTLatency(AdditiveMetric):
    """Sum of per-layer lookup-table entries (ms), as OFA's LatencyTable does."""

    def __init__(self, space: DesignSpace, name: str, layer_cost, describe, source: str = ""):
        super().__init__(space, name, "ms", False, layer_cost, 1.0, describe)
        self.source = source  # which table serves the space (for logs and tags)


def _direct(space: DesignSpace, t: Table) -> LUTLatency:
    """Entries looked up by each layer's own key; the first missing layer is an error."""
    keyf = KEY_FUNCTIONS[t.format]
    missing = [r for r in space.resolutions if r not in t.files]
    if missing:
        raise UserError(f"{_space_label(space)} at {missing[0]} px: no table for that resolution in {t.describe()}")
    cost: dict[tuple[Layer, int], float] = {}
    for r in space.resolutions:
        data = t.at(r)
        for layer in _all_layers(space, r):
            if (layer, r) in cost:
                continue
            try:
                key = keyf(layer)
            except TypeError:
                raise UserError(f"{_space_label(space)}: its {type(layer).__name__} layers have no key in the "
                                f"{t.format} table format of {t.origin}") from None
            v = 0.0 if key is None else _entry(data, key)
            if v is None:
                raise UserError(f"{_space_label(space, r)}: first missing layer '{key}' in {t.describe()}")
            cost[(layer, r)] = v
    keys = {lr: keyf(lr[0]) for lr in cost}
    return LUTLatency(space, "latency", lambda l, r: cost.get((l, r), float("nan")),
                      lambda l, r: f"{keys.get((l, r))} @ {r}", t.origin)


def _ref_cost_fn(t: Table, data: dict) -> Callable[[Layer], float | None]:
    """A reference layer's entry; an expansion the table was not measured at is linear
    between the nearest measured ones (ProxylessNAS: 3 and 6, so 4 is interpolated)."""
    keyf = KEY_FUNCTIONS[t.format]
    measured = sorted({int(m.group(1)) for k in data for m in [re.search(r"-expand:(\d+)-", str(k))] if m})

    def ref_cost(b: Layer) -> float | None:
        key = keyf(b)
        if key is None:
            return 0.0
        v = _entry(data, key)
        if v is not None or t.format != "proxyless" or not (isinstance(b, MBConvLayer) and b.expand_conv):
            return v
        e = round(b.mid / b.c_in)
        lo = max((x for x in measured if x < e), default=None)
        hi = min((x for x in measured if x > e), default=None)
        if lo is None or hi is None:
            return None
        vl, vh = _entry(data, proxyless_key(b, lo)), _entry(data, proxyless_key(b, hi))
        return None if vl is None or vh is None else vl + (vh - vl) * (e - lo) / (hi - lo)
    return ref_cost


def _reference(space: DesignSpace, t: Table):
    """The network the (single-resolution) table was measured for: the space's family at
    the width whose every layer the table holds, at the table's resolution."""
    if len(t.files) != 1:
        raise UserError(f"device.latency.transfer=macs needs one table measured at one resolution, "
                        f"{t.origin} holds {t.resolutions}")
    if space.width_mult is None:
        raise UserError(f"{_space_label(space)}: MAC transfer needs a space with a width multiplier")
    (r0,) = t.resolutions
    data, keyf = t.at(r0), KEY_FUNCTIONS[t.format]
    ref_cost = _ref_cost_fn(t, data)
    first_missing = None
    for w in [round(0.35 + 0.05 * i, 2) for i in range(54)]:  # width multipliers 0.35 .. 3.0
        try:
            ref = space.variant(resolutions=(r0,), width_mult=w)
            stem = ref.fixed_layers(r0, 0)[0][0]
            if ref_cost(stem) is None:
                continue
        except (UserError, TypeError):
            continue
        miss = next((b for b in _all_layers(ref, r0) if ref_cost(b) is None), None)
        if miss is None:
            return ref, r0, ref_cost
        first_missing = first_missing or (w, keyf(miss))
    where = (f"at width {first_missing[0]:g}, whose first convolution it holds, the first missing layer is "
             f"'{first_missing[1]}'"
             if first_missing else "it holds no first convolution of this family at any width")
    raise UserError(f"{_space_label(space)}: nothing to transfer from {t.describe()}: {where}")


def _transferred(space: DesignSpace, t: Table) -> LUTLatency:
    """Each layer costs its reference layer's entry x the MAC ratio (see the module doc)."""
    ref, r0, ref_cost = _reference(space, t)
    keyf = KEY_FUNCTIONS[t.format]
    ref_of: dict[tuple[Layer, int], Layer] = {}
    for r in space.resolutions:
        for s in range(space.n_slot_positions):
            for c in range(space.n_slot_choices):
                for a, b in zip(space.choice_layers(r, s, c)[0], ref.choice_layers(r0, s, c)[0]):
                    ref_of[(a, r)] = b
        for f in range(space.n_fixed_variants):
            mine, theirs = space.fixed_layers(r, f), ref.fixed_layers(r0, f)
            ref_of.update({(a, r): b for a, b in zip(mine[0] + mine[1], theirs[0] + theirs[1])})
    cost: dict[tuple[Layer, int], float] = {}
    for (a, r), b in ref_of.items():
        v = ref_cost(b)  # not None: the reference was chosen for holding every layer
        cost[(a, r)] = v * layer_macs(a) / layer_macs(b) if v else 0.0
    return LUTLatency(space, "latency", lambda l, r: cost.get((l, r), float("nan")),
                      lambda l, r: f"{keyf(ref_of[(l, r)])} (reference of {l}) @ {r}", t.origin)


_announced: set[tuple[str, str]] = set()


def table_latency(space: DesignSpace, tables: list[Table]) -> LUTLatency:
    """Latency from the first table that holds every layer the space can have; else one
    line naming, per table, what it lacks."""
    reasons = []
    for t in tables:
        try:
            metric = (_transferred if t.transfer == "macs" else _direct)(space, t)
        except UserError as exc:
            reasons.append(str(exc))
            continue
        if (space.name, t.origin) not in _announced:  # coverage checks and the run build it alike: say it once
            _announced.add((space.name, t.origin))
            log.info("latency of %s from lookup table %s", space.name, t.describe())
        return metric
    if len(reasons) == 1:
        raise UserError(reasons[0])
    raise UserError(f"none of its {len(tables)} tables holds it: " + "; ".join(reasons))


def lookup_table_latency(space: DesignSpace, table, fmt: str = "auto", transfer: str = "none") -> LUTLatency:
    """Latency of `space` from a device's table source(s) (`device.latency.table`)."""
    return table_latency(space, open_tables(table, fmt, transfer))


# the published tables, as the note10 device names them
NOTE10_TABLES = [{"path": "asset:ofa/note10", "format": "ofa", "transfer": "none"},
                 {"path": "asset:proxylessnas/mobile_trim.yaml", "format": "proxyless", "transfer": "macs"}]


def note10_latency(space: DesignSpace) -> LUTLatency:
    """OFA's Note10 tables (MobileNetV3 w1.2) from the published files."""
    return lookup_table_latency(space, NOTE10_TABLES[:1])


def proxyless_mobile_latency(space: DesignSpace) -> LUTLatency:
    """ProxylessNAS's mobile (Pixel 1) table, transferred to the space by MAC ratio."""
    return lookup_table_latency(space, NOTE10_TABLES[1:])
