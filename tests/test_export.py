"""task=export: a search's front.csv -> ONNX files + a seed-format manifest -> timed with
ONNX Runtime (standing in for a phone's own tool) -> the filled CSV trains a predictor."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import HEADER, read_latency_csv
from blockprof.core.registry import build_space
from blockprof.predictors.train import load_checkpoint
from conftest import REPO, compose, run_cli

NOTE10 = ["space=mbv3", "device=note10", "tracking=none"]
PHONE = ["space=mbv3", "device=myphone", "tracking=none"]  # a device blockprof cannot reach, from a user's folder


def _phone_conf(tmp_path):
    """The user's own device file: a predictor device named after its option."""
    d = tmp_path / "myconf" / "device"
    d.mkdir(parents=True, exist_ok=True)
    (d / "myphone.yaml").write_text("defaults:\n  - /schema/device/latency/predictor@latency\n  - _self_\n"
                                    "name: myphone\n")
    return str(tmp_path / "myconf")


def _compose_phone(overrides, tmp_path):
    from blockprof.app.compose import compose as compose_config
    return compose_config([*PHONE, *overrides, f"paths.output_root={tmp_path / 'o'}"], config_dir=_phone_conf(tmp_path))


def _time_manifest(manifest, out, *extra):
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "time_onnx_manifest.py"), str(manifest),
                        "--out", str(out), "--warmup", "1", "--runs", "3", *extra],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p


def test_front_exported_timed_and_trained_end_to_end(tmp_path):
    # 1. a real (tiny) search: its front.csv lists the archs to take to the device
    search = execute(compose([*NOTE10, "task=search", "search.budget=60", "search.init_size=40",
                              "search.budget_per_iter=20", "search.plot=false"], tmp_path / "o"),
                     run_dir=tmp_path / "search")
    front_csv = tmp_path / "search" / "front.csv"
    front = pd.read_csv(front_csv)
    assert len(front) >= 5

    # 2. export: one ONNX file per (arch, resolution) and a manifest in the seed's format
    res = execute(_compose_phone(["task=export", f"task.archs_csv={front_csv}",
                                  f"task.out_dir={tmp_path / 'export'}"], tmp_path), run_dir=tmp_path / "run_export")
    manifest = tmp_path / "export" / "manifest.csv"
    assert res["manifest"] == manifest and res["written"] == len(front) and res["kept"] == 0
    man = pd.read_csv(manifest, keep_default_na=False)
    assert list(man.columns) == HEADER  # the seed's six columns; file paths are in the sidecar
    files = pd.read_csv(res["files"], keep_default_na=False)
    assert res["files"] == tmp_path / "export" / "files.csv" and list(files["net_id"]) == list(man["net_id"])
    man["onnx_file"] = files["onnx_file"]
    assert list(man["net_str"]) == list(front["arch"]) and list(man["resolution"]) == list(front["resolution"])
    assert (man["end-to-end lat"] == "").all() and set(man["device"]) == {"myphone"}
    with pytest.raises(UserError) as exc:  # the empty manifest is not training data yet: one line, with the line
        read_latency_csv(manifest, build_space("mbv3"))
    assert f"{manifest}:2:" in str(exc.value)

    # the files are the listed subnets: static input shapes, 1000 logits, run in ONNX Runtime
    space = build_space("mbv3")
    for i in (0, len(man) - 1):
        path = tmp_path / "export" / man["onnx_file"][i]
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        r = int(man["resolution"][i])
        (inp,) = model.graph.input
        assert inp.name == "input" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, r, r]
        x = np.random.default_rng(i).standard_normal((1, 3, r, r)).astype(np.float32)
        (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
        assert got.shape == (1, 1000) and np.isfinite(got).all()
        # one depthwise conv per MBConv layer of the arch, plus the fixed first block's
        depthwise = sum(node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
                        for node in model.graph.node)
        assert depthwise == 1 + sum(len(u) for u in space.parse(man["net_str"][i], r).units)

    # 3. time every file with ONNX Runtime (the phone's own tool would go here)
    filled = tmp_path / "data" / "ofa_mbv3_myphone_lat_data.csv"
    p = _time_manifest(manifest, filled)
    assert f"timed {len(man)} of {len(man)} models" in p.stdout
    recs = read_latency_csv(filled, space)
    assert len(recs) == len(man) and all(r.latency_ms > 0 for r in recs)
    assert [r.arch.text for r in recs] == list(front["arch"])

    # 4. the filled CSV trains a predictor through task=train_predictor
    ckpt = tmp_path / "myphone_gnn.pt"
    out = execute(_compose_phone(["task=train_predictor", f"task.csv={filled}", f"task.checkpoint={ckpt}",
                                  "task.model=gnn", "task.max_epochs=15", "task.patience=15", "task.hidden=8",
                                  "task.split=[0.6,0.2,0.2]", "task.log_model=false",
                                  "task.allow_small_test=true"], tmp_path),
                  run_dir=tmp_path / "run_train")
    assert ckpt.is_file() and np.isfinite(out["test"]["mape"])
    model, meta = load_checkpoint(ckpt, space)
    assert meta["data"]["rows"] == len(man) and meta["data"]["device"] == "myphone"
    pred = model.predict([r.arch for r in recs])
    assert pred.shape == (len(recs),) and (pred > 0).all()

    # ...and, as the device's default CSV, serves `device=myphone` (trained there on first use)
    from blockprof.app.metric_factory import build_metrics
    cfg = _compose_phone(["task=evaluate", f"paths.data_dir={tmp_path / 'data'}",
                          "+device.latency.train.max_epochs=3", "device.latency.allow_small_test=true"], tmp_path)
    lat = build_metrics(cfg, space)["latency"]
    lat.bind_run_dir(tmp_path / "run_first_use")
    assert (lat.evaluate([r.arch for r in recs[:3]]) > 0).all()
    assert (tmp_path / "data" / "predictors" / "mbv3_myphone_gnn.pt").is_file()


def test_interrupted_export_resumes(tmp_path):
    out_dir = tmp_path / "export"
    over = [*NOTE10, "task=export", "task.num_archs=3", f"task.out_dir={out_dir}", "seed=4"]
    first = execute(compose(over, tmp_path / "o"), run_dir=tmp_path / "r1")
    assert (first["written"], first["kept"]) == (3, 0)
    man = pd.read_csv(first["manifest"], keep_default_na=False)
    files = [out_dir / f for f in pd.read_csv(first["files"])["onnx_file"]]
    mtimes = [f.stat().st_mtime_ns for f in files]
    # a kill mid-file leaves only atomic_write's temp file; a finished file is whole
    files[1].unlink()
    stale = out_dir / "onnx" / f".{files[1].name}.abc123.tmp"
    stale.write_bytes(b"half a model")
    again = execute(compose(over, tmp_path / "o"), run_dir=tmp_path / "r2")
    assert (again["written"], again["kept"]) == (1, 2)
    assert files[1].is_file() and not stale.exists()
    assert [files[0].stat().st_mtime_ns, files[2].stat().st_mtime_ns] == [mtimes[0], mtimes[2]]
    assert pd.read_csv(again["manifest"], keep_default_na=False).equals(man)
    onnx.checker.check_model(onnx.load(str(files[1])))
    # another opset in the same folder would mix files: refused
    with pytest.raises(UserError) as exc:
        execute(compose([*over, "task.opset=13"], tmp_path / "o"), run_dir=tmp_path / "r3")
    assert "opset=17" in str(exc.value) and "task.out_dir" in str(exc.value)


def test_timing_script_resumes_a_partly_filled_csv(tmp_path):
    res = execute(compose([*NOTE10, "task=export", "task.num_archs=2", f"task.out_dir={tmp_path / 'e'}"],
                          tmp_path / "o"), run_dir=tmp_path / "r")
    filled = tmp_path / "filled.csv"
    _time_manifest(res["manifest"], filled, "--clock", "cpu")
    df = pd.read_csv(filled)
    df.loc[1, "end-to-end lat"] = np.nan  # as if killed before the second model
    df.to_csv(filled, index=False)
    p = _time_manifest(res["manifest"], filled)
    assert "timed 1 of 2 models (1 kept" in p.stdout
    again = pd.read_csv(filled)
    assert again["end-to-end lat"][0] == df["end-to-end lat"][0] and again["end-to-end lat"][1] > 0


def test_bad_export_options_are_one_line(tmp_path):
    p = run_cli(["task=export", "task.formats=[onnx,gif]", f"paths.output_root={tmp_path / 'out'}",
                 "tracking=none"], cwd=tmp_path)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "task.formats" in errors[0] and "gif" in errors[0]
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        with pytest.raises(UserError) as exc:
            execute(compose([*NOTE10, "task=export", "task.formats=[onnx,tflite]"], tmp_path / "o"),
                    run_dir=tmp_path / "r")
        assert "litert-torch" in str(exc.value)
    with pytest.raises(UserError) as exc:
        execute(compose([*NOTE10, "task=export", "task.num_archs=0"], tmp_path / "o"), run_dir=tmp_path / "r")
    assert "task.num_archs" in str(exc.value)


def test_onnx_file_computes_what_the_subnet_computes(tmp_path):
    from blockprof.app.tasks.export import export_onnx
    space = build_space("mbv3")
    arch = space.sample(np.random.default_rng(2), 1, resolution=176)[0]
    net = space.build_subnet(arch)
    path = export_onnx(net, 176, tmp_path / "a.onnx", 17)
    x = torch.randn(1, 3, 176, 176)
    with torch.no_grad():
        want = net(x).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert np.allclose(got, want, rtol=1e-3, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]  # no temp file left beside it
