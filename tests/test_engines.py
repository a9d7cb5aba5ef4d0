"""Deployment engines: ONNX export cache, ONNX Runtime and OpenVINO timed through the protocol."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from blockprof.common.errors import UserError
from blockprof.core.registry import build_space
from blockprof.metrics.engines import OpenVinoEngine, OrtEngine, TorchEngine, make_engine, onnx_path
from blockprof.metrics.measured import MeasuredLatency


@pytest.fixture(scope="module")
def space():
    return build_space("mbv3", resolutions=[128])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")  # shared: each export costs seconds


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_onnx_engines_run_the_exported_subnet(space, cache, name):
    arch = space.sample(np.random.default_rng(0), 1)[0]
    eng = make_engine(name, space, cache_dir=cache)
    with eng.session():
        run = eng.prepare(arch)
        out = run()
    logits = out[0]
    ref = space.build_subnet(arch)(torch.from_numpy(eng.input(arch))).detach().numpy()
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-3, atol=1e-3)  # same net, same numbers
    path = onnx_path(cache, space, arch)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    eng.prepare(arch)  # cached per (arch, resolution): not exported again
    assert path.stat().st_mtime_ns == stamp
    assert eng.time_once(run) > 0


def test_engines_share_the_export_cache_and_metric_uses_them(space, cache):
    archs = space.sample(np.random.default_rng(1), 2)
    stamps = None
    for cls in (OrtEngine, OpenVinoEngine):
        m = MeasuredLatency(space, warmup=0, repeats=2, chunk_size=2, references=1,
                            engine=cls.name, cache_dir=cache)
        assert isinstance(m.engine, cls) and m.proto.clock == "cpu"
        v = m.evaluate(archs)
        assert v.shape == (2,) and (v > 0).all()
        # the two archs and the reference: exported by the first engine, reused by the second
        paths = [onnx_path(cache, space, a) for a in [*archs, *m.timer.refs]]
        now = [p.stat().st_mtime_ns for p in paths]
        assert stamps is None or now == stamps
        stamps = now


def test_engine_choice_errors(space, tmp_path):
    assert isinstance(make_engine("torch", space), TorchEngine)
    with pytest.raises(UserError, match="unknown device.latency.engine"):
        make_engine("tvm", space, cache_dir=tmp_path)
    with pytest.raises(UserError, match="needs device.latency.cache_dir"):
        make_engine("onnxruntime", space)
    with pytest.raises(UserError, match="runs on the CPU"):
        make_engine("openvino", space, hw="cuda", cache_dir=tmp_path)
