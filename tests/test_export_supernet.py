"""task=export task.weights=supernet: subnets cut from an OFA supernet checkpoint with their
weights, saved as PyTorch checkpoints and ONNX. The supernet is a randomly initialised real
OFA supernet saved in OFA's checkpoint format; the references are computed by OFA's own
classes (the supernet run with its active subnet set), not by the code under test."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from blockprof.app.main import execute
from blockprof.app.tasks.export import load_subnet
from blockprof.common.errors import UserError
from blockprof.core.registry import build_space
from blockprof.metrics.imagenet import normalize, write_synthetic_imagefolder
from blockprof.metrics.supernet_accuracy import (
    CHECKPOINTS, SupernetAccuracy, load_supernet, save_ofa_checkpoint, set_running_statistics,
)
from conftest import compose

RES = 160
BASE = ["space=mbv3", f"space.resolutions=[{RES}]", "device=note10", "tracking=none", "task=export",
        "task.weights=supernet", "task.target=myphone", "data.workers=0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def space():
    return build_space("mbv3", resolutions=[RES])


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, space):
    """A random-init OFA-MobileNetV3 supernet in OFA's checkpoint format; its BatchNorm
    statistics made non-trivial, so that copying them (or not) shows in the outputs."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(7)
    net = space.new_supernet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    save_ofa_checkpoint(net, d / CHECKPOINTS[space.supernet].filename)
    return d


def _ofa_active_output(space, ckpt_dir, arch, x):
    """What OFA's supernet computes with `arch` as its active subnet (no cutting)."""
    sup = load_supernet(space, ckpt_dir / CHECKPOINTS[space.supernet].filename)
    cfg = space.to_ofa(arch)
    sup.set_active_subnet(ks=cfg["ks"], e=cfg["e"], d=cfg["d"])
    with torch.no_grad():
        return sup(x)


def test_supernet_weights_exported_as_checkpoint_and_onnx(tmp_path, space, ckpt_dir):
    out = tmp_path / "export"
    res = execute(compose([*BASE, "task.num_archs=2", "seed=3", f"task.checkpoint_dir={ckpt_dir}",
                           f"task.out_dir={out}"], tmp_path / "o"), run_dir=tmp_path / "run")
    assert res["weights"] == "supernet" and res["written"] == 4  # onnx + pytorch per arch
    man = pd.read_csv(res["manifest"], keep_default_na=False)
    files = pd.read_csv(res["files"], keep_default_na=False)
    assert list(files.columns) == ["net_id", "resolution", "onnx_file", "pytorch_file"]
    assert set(man["device"]) == {"myphone"}
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, RES, RES)).astype(np.float32))
    for i in range(len(man)):
        arch = space.parse(man["net_str"][i], man["resolution"][i])
        want = _ofa_active_output(space, ckpt_dir, arch, x)
        # the checkpoint: a plain dict, loadable with the safe loader, rebuilt from OFA's config alone
        net, ck = load_subnet(out / files["pytorch_file"][i])
        assert space.from_ofa(ck["net_config"]) == arch and ck["arch"] == arch.text
        with torch.no_grad():
            got = net(x)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got - want).abs().max()
        # ...and not what the randomly initialised subnet computes: the weights came from the file
        with torch.no_grad():
            assert not torch.allclose(space.build_subnet(arch)(x), want, rtol=1e-2, atol=1e-3)
        # the ONNX file computes the same (batch 1: the file's static input shape)
        sess = ort.InferenceSession(str(out / files["onnx_file"][i]), providers=["CPUExecutionProvider"])
        for b in range(2):
            (onnx_out,) = sess.run(None, {"input": x[b:b + 1].numpy()})
            assert np.allclose(onnx_out, want[b:b + 1].numpy(), rtol=1e-3, atol=1e-4)

    # the folder holds supernet weights: a random-weight export into it would mix files
    with pytest.raises(UserError) as exc:
        execute(compose([*BASE[:5], "task.target=myphone", "task.num_archs=2", "seed=3", f"task.out_dir={out}"],
                        tmp_path / "o"), run_dir=tmp_path / "run2")
    assert "other weights" in str(exc.value) and "task.out_dir" in str(exc.value)


def test_batchnorm_recalibrated_as_the_accuracy_metric_does(tmp_path, space, ckpt_dir):
    imagenet = write_synthetic_imagefolder(tmp_path / "imagenet", 3, n_train=4, n_val=2)
    out = tmp_path / "export"
    res = execute(compose([*BASE, "task.num_archs=1", "seed=5", f"task.checkpoint_dir={ckpt_dir}",
                           f"task.out_dir={out}", f"data.imagenet={imagenet}", "task.calib_images=6",
                           "task.calib_batch_size=3", "task.formats=[pytorch]"], tmp_path / "o"),
                  run_dir=tmp_path / "run")
    files = pd.read_csv(res["files"])
    net, ck = load_subnet(out / files["pytorch_file"][0])
    arch = space.parse(ck["arch"], ck["resolution"])
    assert ck["weights"]["bn"]["images"] == 6
    # the supernet-accuracy metric's own pipeline, same seed and calibration settings
    metric = SupernetAccuracy(space, ckpt_dir / CHECKPOINTS[space.supernet].filename, imagenet / "train",
                              val_dir=imagenet / "val", calib_images=6, calib_batch_size=3, seed=5, workers=0,
                              device="cpu", progress=False)
    ref = space.build_subnet(arch, supernet=metric.supernet)
    uncalibrated = {k: v.clone() for k, v in ref.state_dict().items()}
    set_running_statistics(ref, metric.calibration_set(RES), 3, "cpu")
    state = net.state_dict()
    bn = [k for k in state if k.endswith("running_mean")]
    assert bn and all(torch.allclose(state[k], ref.state_dict()[k], atol=1e-6) for k in state)
    assert not all(torch.allclose(state[k], uncalibrated[k]) for k in bn)  # the statistics did change
    x = normalize(metric.calibration_set(RES)[:2], "cpu")
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), rtol=1e-4, atol=1e-5)


def test_bad_weights_options_are_one_line(tmp_path, ckpt_dir):
    cases = [
        (["task.weights=pretrained"], "task.weights must be one of ['random', 'supernet']"),
        ([f"task.checkpoint_dir={tmp_path}"], f"task.checkpoint_dir {tmp_path} holds no checkpoint"),
        ([f"task.checkpoint_dir={ckpt_dir}", "task.target='my,phone'"], "task.target 'my,phone'"),
        ([f"task.checkpoint_dir={ckpt_dir}", f"data.imagenet={tmp_path / 'none'}"], "none"),
        ([f"task.checkpoint_dir={ckpt_dir}", "task.target=a/b"], "not a path"),
        ([f"task.checkpoint_dir={ckpt_dir}", "task.unit=min"], "task.unit"),
    ]
    for extra, needle in cases:
        run_dir = tmp_path / "run"
        with pytest.raises(UserError) as exc:
            execute(compose([*BASE, "task.num_archs=1", *extra], tmp_path / "o"), run_dir=run_dir)
        msg = str(exc.value)
        assert needle in msg and "\n" not in msg, (extra, msg)
        assert not run_dir.exists()  # refused before the run folder was written to


def test_readme_ofa_round_trip_example_runs(capsys):
    """The README's Python API example of to_ofa / from_ofa / build_subnet runs as written."""
    import re
    from conftest import REPO
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = [c for c in re.findall(r"```python\n(.*?)```", section, re.S) if "build_subnet" in c]
    assert len(code) == 1
    exec(compile(code[0], "README.md", "exec"), {})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(" parameters") and "|" in line and int(line.split()[-2]) > 1_000_000
