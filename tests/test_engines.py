"""Deployment engines: ONNX export cache, ONNX Runtime and OpenVINO timed through the protocol."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from blockprof.common.errors import UserError
from blockprof.core.space import build_space
from blockprof.metrics.engines import OpenVinoEngine, OrtEngine, TorchEngine, make_engine, onnx_path
from blockprof.metrics.measured import MeasuredLatency


@pytest.fixture(scope="module")
def space():
    return build_space("mbv3", resolutions=[128])


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_onnx_engines_run_the_exported_subnet(space, tmp_path, name):
    arch = space.sample(np.random.default_rng(0), 1)[0]
    eng = make_engine(name, space, cache_dir=tmp_path)
    with eng.session():
        run = eng.prepare(arch)
        out = run()
    logits = out[0] if name == "onnxruntime" else out[0]
    ref = space.build_subnet(arch)(torch.from_numpy(eng.input(arch))).detach().numpy()
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-3, atol=1e-3)  # same net, same numbers
    path = onnx_path(tmp_path, space, arch)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    eng.prepare(arch)  # cached per (arch, resolution): not exported again
    assert path.stat().st_mtime_ns == stamp
    assert eng.time_once(run) > 0


def test_engines_share_the_export_cache_and_metric_uses_them(space, tmp_path):
    archs = space.sample(np.random.default_rng(1), 2)
    for cls in (OrtEngine, OpenVinoEngine):
        m = MeasuredLatency(space, warmup=0, repeats=2, chunk_size=2, references=1,
                            engine=cls.name, cache_dir=tmp_path)
        assert isinstance(m.engine, cls)
        v = m.evaluate(archs)
        assert v.shape == (2,) and (v > 0).all()
    # two archs + one reference, exported once for both engines
    assert len(list((tmp_path / space.name).glob("*.onnx"))) == 3


def test_engine_choice_errors(space, tmp_path):
    assert isinstance(make_engine("torch", space), TorchEngine)
    with pytest.raises(UserError, match="unknown device.latency.engine"):
        make_engine("tvm", space, cache_dir=tmp_path)
    with pytest.raises(UserError, match="needs device.latency.cache_dir"):
        make_engine("onnxruntime", space)
    with pytest.raises(UserError, match="runs on the CPU"):
        make_engine("openvino", space, hw="cuda", cache_dir=tmp_path)
