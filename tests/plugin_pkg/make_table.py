"""Writes bp_example/tables/synth_phone.yaml: a per-layer latency table in ProxylessNAS's
mobile format (the keys blockprof's `proxyless_mobile` reader looks up), with synthetic
means, 0.05 ms + 0.01 ms per million MACs, so the example device ships its own numbers."""
from __future__ import annotations

from pathlib import Path

import yaml

from blockprof.core.families.mbconv import ProxylessSpace
from blockprof.core.layers import MBConvLayer, PoolLayer, layer_macs
from blockprof.metrics.lut import ProxylessMobileLatency


def main() -> None:
    ref = ProxylessSpace(name="ref", resolutions=[224], width_mult=1.0)
    key = ProxylessMobileLatency._key
    table = {}

    def put(layer, k):
        table[k] = {"count": 1, "mean": round(0.05 + 0.01 * layer_macs(layer) / 1e6, 6), "var": 0.0}

    for s in range(ref.n_slot_positions):
        for c in range(ref.n_slot_choices):
            for layer in ref.choice_layers(224, s, c)[0]:
                if isinstance(layer, MBConvLayer) and layer.expand_conv:
                    for e in (3, 6):  # the format measures expand 3 and 6; 4 is interpolated
                        put(layer, key(None, layer, e))
                else:
                    put(layer, key(None, layer))
    fixed = ref.fixed_layers(224, 0)
    for layer in fixed[0] + fixed[1]:
        if not isinstance(layer, PoolLayer):
            put(layer, key(None, layer))
    out = Path(__file__).parent / "bp_example" / "tables" / "synth_phone.yaml"
    out.write_text(yaml.safe_dump(dict(sorted(table.items())), sort_keys=False))
    print(f"{len(table)} entries -> {out}")


if __name__ == "__main__":
    main()
