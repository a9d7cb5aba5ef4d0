"""Design spaces: round trips, validation, slot forcing, sampling, encoding, families."""
import re

import numpy as np
import pytest

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, Slot
from blockprof.core.registry import build_space

SPACES = ["mbv3", "mbv3_w10", "pn", "resnet50"]


@pytest.mark.parametrize("name", SPACES)
def test_text_and_ofa_round_trips(name):
    space = build_space(name)
    for arch in space.sample(np.random.default_rng(1), 200):
        assert space.parse(arch.text, arch.resolution) == arch
        assert space.from_ofa(space.to_ofa(arch)) == arch
        ofa = space.to_ofa(arch)
        assert space.to_ofa(space.from_ofa(ofa)) == ofa


def test_ofa_encoding_shapes_and_values():
    mb = build_space("mbv3")
    arch = mb.parse("|".join(["mbconv3_e6_k7->mbconv3_e4_k5"] * 5), 224)
    spec = mb.to_ofa(arch)
    assert spec["d"] == [2] * 5 and len(spec["ks"]) == 20 and spec["r"] == 224
    assert spec["ks"][:2] == [7, 5] and spec["e"][:2] == [6, 4]
    pn = build_space("pn")
    a = pn.sample(np.random.default_rng(0), 1)[0]
    assert len(pn.to_ofa(a)["ks"]) == 21 and pn.to_ofa(a)["d"][-1] == 1
    rn = build_space("resnet50")
    s = rn.to_ofa(rn.sample(np.random.default_rng(0), 1)[0])
    assert len(s["d"]) == 5 and len(s["w"]) == 6 and len(s["e"]) == 18


def test_sampling_is_seeded_and_covers_the_space():
    space = build_space("mbv3")
    a = space.sample(np.random.default_rng(7), 500)
    assert a == space.sample(np.random.default_rng(7), 500)
    assert a != space.sample(np.random.default_rng(8), 500)
    depths = np.array([x.depths for x in a])
    assert depths.min() == 2 and depths.max() == 4
    assert {x.resolution for x in a} == set(space.resolutions)
    assert {b for x in a for u in x.units for b in u} == set(space.blocks)


@pytest.mark.parametrize("text,res,needle", [
    ("mbconv3_e6_k7->mbconv3_e4_k5", 224, "space has 5"),
    ("|".join(["mbconv3_e6_k7"] * 5), 224, "unit 0 has 1 layers"),
    ("|".join(["mbconv3_e6_k7->mbconv3_e5_k5"] * 5), 224, "unknown block 'mbconv3_e5_k5' at unit 0 layer 1"),
    ("|".join(["mbconv3_e6_k7->mbconv3_e4_k5"] * 5), 300, "resolution 300"),
    ("|".join(["mbconv3_e6_k7->mbconv3_e4_k5"] * 5), "abc", "not an integer"),
])
def test_parse_errors_name_the_problem(text, res, needle):
    with pytest.raises(UserError, match=needle):
        build_space("mbv3").parse(text, res)


def test_resnet_unit_width_must_be_uniform():
    rn = build_space("resnet50")
    a = rn.sample(np.random.default_rng(0), 1)[0]
    units = list(a.units)
    units[2] = (units[2][0].replace("_w", "_wX"),) + units[2][1:]
    bad = "|".join("->".join(u) for u in units).replace("_wX0", "_w1").replace("_wX1", "_w2").replace("_wX2", "_w0")
    with pytest.raises(UserError, match="unit 2 mixes width"):
        rn.parse(bad, a.resolution)


@pytest.mark.parametrize("name", ["mbv3", "pn"])
def test_force_sets_block_and_raises_depth(name):
    space = build_space(name)
    rng = np.random.default_rng(0)
    # layer 3 of a depth-2 unit: depth must become 4 (the seed's `depth < l` bug left it at 3)
    base = space.parse("|".join(["->".join([space.blocks[0]] * 2)] * 5 + ([space.blocks[0]] if name == "pn" else [])), 224)
    slot = space.parse_slot([1, 3, 7, 6])[0]
    forced = space.force(base, slot, rng)
    assert forced.depths[1] == 4 and forced.units[1][3] == space.block_token(6, 7)
    assert forced.units[0] == base.units[0] and forced.resolution == 224
    space.validate(forced)
    # layer 3 of a depth-3 unit: depth 4 too
    base3 = space.force(base, space.parse_slot([2, 2, 3, 3])[0], rng)
    assert base3.depths[2] == 3
    f3 = space.force(base3, space.parse_slot([2, 3, 5, 4, 176])[0], rng)
    assert f3.depths[2] == 4 and f3.units[2][3] == space.block_token(4, 5) and f3.resolution == 176
    # an already deep enough unit keeps its depth
    deep = space.force(f3, space.parse_slot([2, 0, 3, 3])[0], rng)
    assert deep.depths[2] == 4


def test_resnet_force_and_slots():
    rn = build_space("resnet50")
    rng = np.random.default_rng(0)
    a = rn.sample(rng, 1)[0]
    f = rn.force(a, rn.parse_slot([2, 3, 5, 0.35, 1])[0], rng)
    assert f.depths[3] == 6 and f.units[3][5] == "bneck_e0.35_w1"
    assert all(t.endswith("_w1") for t in f.units[3])
    rn.validate(f)
    f = rn.force(a, rn.parse_slot([0, 0])[0], rng)
    assert f.units[0][0].startswith("stem_d0")
    f = rn.force(a, rn.parse_slot([1, 1, 2])[0], rng)
    assert f.units[0][0].endswith("_w2")
    assert len(rn.slots()) == 2 + 6 + 18 * 9


@pytest.mark.parametrize("spec,needle", [
    ([5, 0, 3, 3], "unit 5 out of range"),
    ([0, 4, 3, 3], "layer 4 out of range"),
    ([0, 0, 4, 3], "kernel 4"),
    ([0, 0, 3, 5], "expand 5"),
    ([0, 0, 3], "expected"),
    ([0, 0, 3, 3, 100], "resolution 100"),
])
def test_bad_slot_specs(spec, needle):
    with pytest.raises(UserError, match=needle):
        build_space("mbv3").parse_slots([spec])


def test_pn_last_unit_has_one_layer():
    pn = build_space("pn")
    with pytest.raises(UserError, match="layer 1 out of range 0..0"):
        pn.parse_slots([[5, 1, 3, 3]])


def test_slot_groups_and_description():
    space = build_space("mbv3")
    groups = space.parse_slots([[1, 0, 7, 6, 224], [[0, 0, 3, 3], [4, 3, 5, 4]]])
    assert groups[0] == [Slot(1, 0, "mbconv3_e6_k7", 224)]
    assert len(groups[1]) == 2
    assert space.describe(groups[0][0]) == "Unit 1 Layer 0 as MBConv6_7x7 with Resolution 224"
    assert len(space.slots()) == 5 * 4 * 9


def test_arch_is_hashable_value():
    a = Arch((("x",),), 224)
    assert {a: 1}[Arch((("x",),), 224)] == 1


# ------------------------------------------------------------------ vectorised encoding
def _reference_encode(space, archs):
    """The per-arch loop `encode` replaced, kept as the definition of its output."""
    n, S = len(archs), space.n_slot_positions
    choice = np.full((n, S), -1, dtype=np.int16)
    fixed = np.zeros(n, dtype=np.int16)
    res = np.array([space.resolutions.index(a.resolution) for a in archs], dtype=np.int16)
    for i, a in enumerate(archs):
        if space.family == "mbconv":
            for u, layers in enumerate(a.units):
                for j, t in enumerate(layers):
                    choice[i, space.slot_offsets[u] + j] = space.block_index[t]
            continue
        stem = a.units[0][0]
        choice[i, 0] = space.stem_index[stem]
        w_prev = space.stem(stem)[2]
        for u in range(1, 5):
            for j, t in enumerate(a.units[u]):
                e, w = space.bneck(t)
                choice[i, space.slot_offsets[u] + j] = space.expands.index(e) * 9 + (w_prev if j == 0 else w) * 3 + w
            w_prev = space.bneck(a.units[u][0])[1]
        fixed[i] = w_prev
    return choice, fixed, res


@pytest.mark.parametrize("name", SPACES)
def test_encode_equals_the_per_arch_loop(name):
    space = build_space(name)
    rng = np.random.default_rng(11)
    archs = space.sample(rng, 500)
    # edge cases too: every unit at its minimum and at its maximum depth, every resolution
    for depth in (space.min_layers, space.max_layers):
        for k, r in enumerate(space.resolutions):
            units = tuple((space.unit_blocks(u)[(5 * u + k) % len(space.unit_blocks(u))],) * d for u, d in enumerate(depth))
            archs.append(space.validate(Arch(units, r)))
    enc = space.encode(archs)
    choice, fixed, res = _reference_encode(space, archs)
    for got, want in ((enc.choice, choice), (enc.fixed, fixed), (enc.res, res)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    empty = space.encode([])
    assert empty.choice.shape == (0, space.n_slot_positions) and empty.res.shape == (0,)


def test_encode_refuses_what_the_space_lacks():
    space = build_space("mbv3")
    a = space.sample(np.random.default_rng(0), 1)[0]
    with pytest.raises(KeyError):
        space.encode([Arch(a.units, 100)])
    with pytest.raises(ValueError):
        space.encode([Arch(a.units[:-1], a.resolution)])
    with pytest.raises(ValueError):
        space.encode([Arch((a.units[0] * 3,) + a.units[1:], a.resolution)])


# ------------------------------------------------------------------ families and capabilities
def test_capabilities_of_the_shipped_spaces():
    caps = {n: build_space(n).capabilities for n in SPACES}
    assert {n for n, c in caps.items() if c.accuracy_predictor} == {"mbv3", "resnet50"}
    # latency tables are a device's data (their coverage is read from their keys): a space keeps structure only
    assert not any(hasattr(c, "lookup_table") for c in caps.values())
    assert all(c.supernet_checkpoint == build_space(n).supernet for n, c in caps.items())
    assert build_space("mbv3").insight_names == ("mbv3", "mbv3")
    assert build_space("mbv3_w10").insight_names == ("mbv3_w10", "mbv3")


def test_a_new_space_in_a_family_is_only_parameters():
    """What a YAML with `_target_` does: the family class from keyword arguments."""
    from hydra.utils import instantiate

    node = {"_target_": "blockprof.core.families.mbconv.MBConvSpace", "name": "mbv3_small",
            "backbone": "mobilenetv3", "width_mult": 1.2, "resolutions": [160, 176]}
    small = instantiate(node)
    ref = build_space("mbv3")
    assert small.name == "mbv3_small" and small.resolutions == (160, 176)
    assert small.supernet == ref.supernet and small.capabilities.accuracy_predictor == ref.capabilities.accuracy_predictor
    a = small.sample(np.random.default_rng(0), 20)
    assert [ref.layers(x) for x in a] == [small.layers(x) for x in a]
    w10 = small.variant(width_mult=1.0)
    assert w10.supernet.endswith("_w1.0") and w10.capabilities.accuracy_predictor is None
    # the family registry: a YAML may name the family instead of the class
    pn = build_space("pn_like", family="mbconv", backbone="proxyless", width_mult=1.3, resolutions=[224])
    assert pn.n_units == 6 and pn.capabilities.supernet_checkpoint == "ofa_proxyless_d234_e346_k357_w1.3"
    assert type(small.ops).__name__ == "MBConvOps" and type(build_space("resnet50").ops).__name__ == "ResNetOps"


@pytest.mark.parametrize("kwargs,needle", [
    ({"name": "nope"}, "unknown space 'nope' (choose from"),
    ({"name": "x", "family": "transformer", "resolutions": [224]}, "names no space family"),
    ({"name": "x", "family": "mbconv", "backbone": "vit", "resolutions": [224]}, "unknown MBConv backbone 'vit'"),
    ({"name": "x", "family": "mbconv", "resolutions": [224], "depth": 3}, "unexpected keyword argument 'depth'"),
    ({"name": "x", "family": "resnet", "resolutions": [224], "width_mult": 1.2}, "takes no width_mult"),
])
def test_bad_space_definitions_are_user_errors(kwargs, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        build_space(**kwargs)
