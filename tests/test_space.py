"""Design spaces: round trips, validation, slot forcing, sampling."""
import numpy as np
import pytest

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, Slot, build_space

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
