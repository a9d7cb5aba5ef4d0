"""Latency from per-layer lookup tables (OFA's Note10 tables; ProxylessNAS's mobile table)."""
from __future__ import annotations

from blockprof.common.assets import load_yaml_asset
from blockprof.common.errors import UserError
from blockprof.core.layers import ConvLayer, Layer, LinearLayer, MBConvLayer, PoolLayer, layer_macs
from blockprof.core.space import DesignSpace
from blockprof.metrics.base import AdditiveMetric


def _shape(*dims) -> str:
    return "x".join(str(d) for d in dims)


def note10_key(layer: Layer) -> str:
    """OFA's Note10 table key of one MobileNetV3 layer."""
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


class LUTLatency(AdditiveMetric):
    """Sum of per-layer lookup-table entries (ms), as OFA's LatencyTable does."""

    def __init__(self, space: DesignSpace, name: str, layer_cost, describe):
        super().__init__(space, name, "ms", False, layer_cost, 1.0, describe)


def note10_latency(space: DesignSpace, table_paths: dict | None = None) -> LUTLatency:
    tables = {r: load_yaml_asset(f"ofa/note10/{r}_lookup_table.yaml",
                                 explicit_path=(table_paths or {}).get(r)) for r in space.resolutions}

    def cost(layer, r):
        entry = tables[r].get(note10_key(layer))
        return float(entry["mean"]) if entry else float("nan")

    return LUTLatency(space, "latency", cost, lambda l, r: f"{note10_key(l)} @ {r}")


class ProxylessMobileLatency(LUTLatency):
    """ProxylessNAS mobile (Pixel 1) table for the `pn` space.

    The table was measured for ProxylessNAS w1.0 at 224 px with expand 3 and 6
    only. Each pn layer is mapped to the same position of that reference network
    (w1.0, 224 px); its entry is scaled by the MAC ratio of the real layer to the
    reference layer, and expand 4 is interpolated between 3 and 6. An estimate,
    not a measurement of w1.3 - documented as such.
    """

    def __init__(self, space: DesignSpace, explicit_path: str | None = None):
        self.table = load_yaml_asset("proxylessnas/mobile_trim.yaml", explicit_path=explicit_path)
        ref = space.variant(resolutions=(224,), width_mult=1.0)
        # every layer the space can have, at each resolution -> the same position of the reference net
        self._ref_of: dict[tuple[Layer, int], Layer] = {}
        for r in space.resolutions:
            for s in range(space.n_slot_positions):
                for c in range(space.n_slot_choices):
                    for a, b in zip(space.choice_layers(r, s, c)[0], ref.choice_layers(224, s, c)[0]):
                        self._ref_of[(a, r)] = b
            mine, theirs = space.fixed_layers(r, 0), ref.fixed_layers(224, 0)
            self._ref_of.update({(a, r): b for a, b in zip(mine[0] + mine[1], theirs[0] + theirs[1])})
        super().__init__(space, "latency", self._cost, lambda l, r: self._key(self._ref_of[(l, r)]))

    def _key(self, layer: Layer, expand: int | None = None) -> str:
        if isinstance(layer, ConvLayer):
            role = "Conv" if layer.c_in == 3 else "Conv_1"
            return (f"{role}-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                    f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}")
        if isinstance(layer, MBConvLayer):
            e = expand if expand is not None else (1 if not layer.expand_conv else round(layer.mid / layer.c_in))
            return (f"expanded_conv-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                    f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}-expand:{e}"
                    f"-kernel:{layer.kernel}-stride:{layer.stride}-idskip:{int(layer.residual)}")
        if isinstance(layer, LinearLayer):
            return f"Logits-input:7x7x{layer.c_in}-output:{layer.c_out}"
        raise TypeError(layer)

    def _entry(self, key: str) -> float:
        e = self.table.get(key)
        return float(e["mean"]) if e else float("nan")

    def _cost(self, layer: Layer, r: int) -> float:
        if isinstance(layer, PoolLayer):
            return 0.0  # the table's Logits entry covers pooling + classifier
        ref = self._ref_of[(layer, r)]
        if isinstance(ref, MBConvLayer) and ref.expand_conv:
            e = round(ref.mid / ref.c_in)
            if e in (3, 6):
                lat = self._entry(self._key(ref, e))
            else:  # expand 4: linear between the measured 3 and 6
                lat3, lat6 = self._entry(self._key(ref, 3)), self._entry(self._key(ref, 6))
                lat = lat3 + (lat6 - lat3) * (e - 3) / 3
        else:
            lat = self._entry(self._key(ref))
        return lat * layer_macs(layer) / layer_macs(ref)



def _note10(space: DesignSpace, table: str | None) -> LUTLatency:
    paths = {r: f"{table}/{r}_lookup_table.yaml" for r in space.resolutions} if table else None
    return note10_latency(space, paths)


# lookup-table kinds a space may declare (`space.capabilities.lookup_table`) -> builder(space,
# explicit table path or folder or None)
LOOKUP_TABLES = {"note10": _note10, "proxyless_mobile": ProxylessMobileLatency}


def lookup_table_latency(space: DesignSpace, table: str | None = None) -> LUTLatency:
    """The latency lookup table the space declares; `table` replaces the downloaded file(s)
    (Note10: a folder of {r}_lookup_table.yaml; ProxylessNAS mobile: the YAML file)."""
    kind = space.capabilities.lookup_table
    if kind not in LOOKUP_TABLES:
        raise UserError(f"space {space.name} has no latency lookup table; pick device=local_cpu or a predictor device")
    return LOOKUP_TABLES[kind](space, table)
