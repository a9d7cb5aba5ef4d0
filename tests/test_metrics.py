"""Metrics against the real thing: torchprofile and numel on real OFA subnets, OFA's own
predictor and lookup-table code, hand sums."""
import re

import numpy as np
import pytest
import torch
import yaml

from blockprof.common.errors import UserError
from blockprof.metrics.measured import MeasuredLatency
from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor
from blockprof.metrics.lut import NOTE10_TABLES, lookup_table_latency, note10_latency, proxyless_mobile_latency
from blockprof.metrics.analytic import mmacs_metric, params_metric
from blockprof.core.registry import build_space

from conftest import SHARED_ASSETS


@pytest.mark.parametrize("name,n", [("mbv3", 20), ("mbv3_w10", 20), ("pn", 20), ("resnet50", 20)])
def test_analytic_counts_equal_torchprofile_and_numel(name, n):
    from torchprofile import profile_macs

    space = build_space(name)
    archs = space.sample(np.random.default_rng(3), n)
    assert len({a.resolution for a in archs}) >= 3  # a resolution mix
    macs = mmacs_metric(space).evaluate(archs)
    params = params_metric(space).evaluate(archs)
    for arch, m, p in zip(archs, macs, params):
        net = space.build_subnet(arch)
        with torch.no_grad():
            real_macs = profile_macs(net, torch.zeros(1, 3, arch.resolution, arch.resolution)) / 1e6
        real_params = sum(t.numel() for t in net.parameters()) / 1e6
        assert m == pytest.approx(real_macs, rel=5e-3), arch
        assert p == pytest.approx(real_params, rel=5e-3), arch


def _note10_table(r):
    with open(SHARED_ASSETS / "ofa" / "note10" / f"{r}_lookup_table.yaml") as f:
        return yaml.safe_load(f)


def test_note10_latency_equals_hand_sum():
    space = build_space("mbv3")
    arch = space.parse("mbconv3_e3_k3->mbconv3_e6_k7|mbconv3_e4_k5->mbconv3_e4_k5->mbconv3_e6_k3|"
                       "mbconv3_e3_k5->mbconv3_e3_k5|mbconv3_e6_k7->mbconv3_e6_k7->mbconv3_e6_k7->mbconv3_e6_k7|"
                       "mbconv3_e4_k3->mbconv3_e3_k7", 192)
    t = _note10_table(192)

    def q(key):
        return t[key]["mean"]

    # written out by hand from the OFA-MBv3 w1.2 structure at 192 px
    expected = q("Conv-input:192x192x3-output:96x96x24")
    expected += q("expanded_conv-input:96x96x24-output:96x96x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0")
    expected += q("expanded_conv-input:96x96x24-output:48x48x32-expand:72-kernel:3-stride:2-idskip:0-se:0-hs:0")
    expected += q("expanded_conv-input:48x48x32-output:48x48x32-expand:192-kernel:7-stride:1-idskip:1-se:0-hs:0")
    expected += q("expanded_conv-input:48x48x32-output:24x24x48-expand:128-kernel:5-stride:2-idskip:0-se:1-hs:0")
    expected += q("expanded_conv-input:24x24x48-output:24x24x48-expand:192-kernel:5-stride:1-idskip:1-se:1-hs:0")
    expected += q("expanded_conv-input:24x24x48-output:24x24x48-expand:288-kernel:3-stride:1-idskip:1-se:1-hs:0")
    expected += q("expanded_conv-input:24x24x48-output:12x12x96-expand:144-kernel:5-stride:2-idskip:0-se:0-hs:1")
    expected += q("expanded_conv-input:12x12x96-output:12x12x96-expand:288-kernel:5-stride:1-idskip:1-se:0-hs:1")
    expected += q("expanded_conv-input:12x12x96-output:12x12x136-expand:576-kernel:7-stride:1-idskip:0-se:1-hs:1")
    expected += 3 * q("expanded_conv-input:12x12x136-output:12x12x136-expand:816-kernel:7-stride:1-idskip:1-se:1-hs:1")
    expected += q("expanded_conv-input:12x12x136-output:6x6x192-expand:544-kernel:3-stride:2-idskip:0-se:1-hs:1")
    expected += q("expanded_conv-input:6x6x192-output:6x6x192-expand:576-kernel:7-stride:1-idskip:1-se:1-hs:1")
    expected += q("Conv_1-input:6x6x192-output:6x6x1152")
    expected += q("AvgPool2D-input:6x6x1152-output:1x1x1152")
    expected += q("Conv_2-input:1x1x1152-output:1x1x1536")
    expected += q("Logits-input:1x1x1536-output:1000")
    assert note10_latency(space).evaluate([arch])[0] == pytest.approx(expected, rel=1e-12)


def test_note10_latency_matches_ofa_latency_table_logic():
    from ofa.tutorial.latency_table import LatencyEstimator

    space = build_space("mbv3")
    archs = space.sample(np.random.default_rng(5), 100)
    ours = note10_latency(space).evaluate(archs)
    estimators = {}
    for r in space.resolutions:
        est = LatencyEstimator.__new__(LatencyEstimator)  # OFA's loader calls yaml.load without a Loader
        est.lut = _note10_table(r)
        estimators[r] = est
    for arch, v in zip(archs, ours):
        spec = space.to_ofa(arch)
        spec["r"] = [arch.resolution]
        assert v == pytest.approx(estimators[arch.resolution].predict_network_latency_given_spec(spec), rel=1e-9)


def test_pn_latency_is_exact_where_the_table_is():
    """At w1.0, 224 px and expand 3/6 the transfer rule reduces to the plain table sum."""
    ref = build_space("pn", resolutions=(224,), width_mult=1.0)
    metric = proxyless_mobile_latency(ref)
    with open(SHARED_ASSETS / "proxylessnas" / "mobile_trim.yaml") as f:
        t = yaml.safe_load(f)
    tok = "mbconv2_e6_k5"
    arch = ref.parse("|".join(["->".join([tok] * 2)] * 5 + ["mbconv2_e3_k3"]), 224)
    expected = t["Conv-input:224x224x3-output:112x112x32"]["mean"]
    expected += t["expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0"]["mean"]
    shapes = [(112, 16, 56, 24, 2), (56, 24, 28, 40, 2), (28, 40, 14, 80, 2), (14, 80, 14, 96, 1), (14, 96, 7, 192, 2)]
    for h, c, h2, c2, s in shapes:
        expected += t[f"expanded_conv-input:{h}x{h}x{c}-output:{h2}x{h2}x{c2}-expand:6-kernel:5-stride:{s}-idskip:0"]["mean"]
        expected += t[f"expanded_conv-input:{h2}x{h2}x{c2}-output:{h2}x{h2}x{c2}-expand:6-kernel:5-stride:1-idskip:1"]["mean"]
    expected += t["expanded_conv-input:7x7x192-output:7x7x320-expand:3-kernel:3-stride:1-idskip:0"]["mean"]
    expected += t["Conv_1-input:7x7x320-output:7x7x1280"]["mean"]
    expected += t["Logits-input:7x7x1280-output:1000"]["mean"]
    assert metric.evaluate([arch])[0] == pytest.approx(expected, rel=1e-9)
    pn = build_space("pn")
    vals = proxyless_mobile_latency(pn).evaluate(pn.sample(np.random.default_rng(0), 200))
    assert np.isfinite(vals).all() and (vals > 0).all()


def test_mbv3_accuracy_predictor_matches_ofa_tutorial():
    from ofa.tutorial.accuracy_predictor import AccuracyPredictor

    space = build_space("mbv3")
    archs = space.sample(np.random.default_rng(9), 300)
    ours = OFAAccuracyPredictor(space).evaluate(archs)
    ref = AccuracyPredictor(pretrained=False, device="cpu")
    ref.model.load_state_dict(torch.load(SHARED_ASSETS / "ofa" / "acc_predictor.pth", map_location="cpu",
                                         weights_only=True))
    specs = [dict(space.to_ofa(a), r=[a.resolution]) for a in archs]
    theirs = ref.predict_accuracy(specs).numpy().reshape(-1) * 100
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert 70 < ours.min() and ours.max() < 85  # top-1 in %


def test_resnet50_accuracy_predictor_matches_ofa():
    from ofa.nas.accuracy_predictor import AccuracyPredictor, ResNetArchEncoder

    space = build_space("resnet50")
    archs = space.sample(np.random.default_rng(2), 200)
    ours = OFAAccuracyPredictor(space).evaluate(archs)
    enc = ResNetArchEncoder(image_size_list=list(space.capabilities.accuracy_predictor.resolutions))
    ref = AccuracyPredictor(enc, 400, 3, checkpoint_path=str(SHARED_ASSETS / "ofa" / "ofa_resnet50_acc_predictor.pth"),
                            device="cpu")
    dicts = []
    for a in archs:
        d = space.to_ofa(a)
        d["image_size"] = d.pop("r")
        dicts.append(d)
    with torch.no_grad():
        theirs = ref.predict_acc(dicts).numpy() * 100
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_no_predictor_for_w10_or_pn():
    for name in ("mbv3_w10", "pn"):
        with pytest.raises(UserError, match="no public accuracy predictor"):
            OFAAccuracyPredictor(build_space(name))


def test_accuracy_predictor_follows_the_family_not_the_name():
    """A new space of the family (other name, fewer resolutions) gets the same predictor;
    a resolution the predictor never saw is refused; torch's thread setting is restored."""
    mbv3 = build_space("mbv3")
    small = build_space("mine", family="mbconv", backbone="mobilenetv3", width_mult=1.2, resolutions=[160, 224])
    archs = small.sample(np.random.default_rng(4), 300)
    before = torch.get_num_threads()
    np.testing.assert_array_equal(OFAAccuracyPredictor(small).evaluate(archs), OFAAccuracyPredictor(mbv3).evaluate(archs))
    assert torch.get_num_threads() == before
    with pytest.raises(UserError, match="knows resolutions"):
        OFAAccuracyPredictor(small.variant(resolutions=[240]))
    plain = OFAAccuracyPredictor(mbv3)  # the addmm path (torch builds without oneDNN) agrees
    plain._onednn = None
    np.testing.assert_allclose(plain.evaluate(archs), OFAAccuracyPredictor(mbv3).evaluate(archs), atol=1e-4)


def test_the_note10_device_serves_each_space_from_the_table_that_holds_it():
    """note10's two tables: OFA's per-resolution folder serves mbv3, ProxylessNAS's single
    file serves pn (MAC transfer); chosen by what their keys hold, not by the space."""
    mbv3, pn = build_space("mbv3"), build_space("pn")
    archs = mbv3.sample(np.random.default_rng(6), 50)
    both = lookup_table_latency(mbv3, NOTE10_TABLES)
    assert both.source == "asset:ofa/note10"
    np.testing.assert_array_equal(both.evaluate(archs), note10_latency(mbv3).evaluate(archs))
    pa = pn.sample(np.random.default_rng(6), 50)
    lp = lookup_table_latency(pn, NOTE10_TABLES)
    assert lp.source == "asset:proxylessnas/mobile_trim.yaml"
    np.testing.assert_array_equal(lp.evaluate(pa), proxyless_mobile_latency(pn).evaluate(pa))
    # mbv3 w1.0: the stem's key encodes 16 channels, the w1.2 tables hold 24
    with pytest.raises(UserError, match=re.escape("space mbv3_w10 (mbconv width 1.0, 160 px): first missing "
                                                  "layer 'Conv-input:160x160x3-output:80x80x16'")):
        lookup_table_latency(build_space("mbv3_w10"), NOTE10_TABLES[:1])
    with pytest.raises(UserError, match=re.escape("space resnet50 (resnet) at 128 px: no table for that resolution")):
        lookup_table_latency(build_space("resnet50"), NOTE10_TABLES)
    # a space reduced to resolutions the table holds is served; one beyond them is named
    assert lookup_table_latency(mbv3.variant(resolutions=(192, 224)), NOTE10_TABLES[:1]).source
    with pytest.raises(UserError, match="at 240 px: no table for that resolution"):
        lookup_table_latency(mbv3.variant(resolutions=(224, 240)), NOTE10_TABLES[:1])


def test_measured_latency_reports_values_and_spread():
    space = build_space("mbv3", resolutions=(160,))
    archs = space.sample(np.random.default_rng(0), 2)
    m = MeasuredLatency(space, threads=1, warmup=1, repeats=3)
    v = m.evaluate(archs)
    assert v.shape == (2,) and (v > 0).all()
    assert m.last_spread.shape == (2,) and (m.last_spread >= 0).all()
    assert torch.get_num_threads() >= 1
