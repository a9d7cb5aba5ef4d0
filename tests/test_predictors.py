"""Latency predictors: op-graph features, training from a CSV, checkpoints, predictor devices."""
from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import write_latency_csv
from blockprof.core.layers import layer_macs
from blockprof.app.metric_factory import build_metrics
from blockprof.metrics.lut import note10_latency
from blockprof.core.registry import build_space
from blockprof.predictors.features import NUMERIC, OpGraphFeaturizer
from blockprof.predictors.latency import SEED_DATA_URL, PredictedLatency
from blockprof.predictors.models import build_model
from blockprof.predictors.train import TrainOptions, fit_model, load_checkpoint, save_checkpoint, split_indices

from conftest import run_cli, synthetic_latency

N_ARCHS = 300
FAST = ["task.max_epochs=40", "task.patience=40", "task.log_model=false"]


@pytest.fixture(scope="module")
def space():
    return build_space("mbv3")


@pytest.fixture(scope="module")
def synthetic(space):
    return synthetic_latency(space, N_ARCHS, seed=0)


def write_csv(path, archs, y, device="npu"):
    return write_latency_csv(path, [(i, a, device, float(v)) for i, (a, v) in enumerate(zip(archs, y))])


# ------------------------------------------------------------------ features
@pytest.mark.parametrize("name", ["mbv3", "pn", "resnet50"])
def test_op_graph_matches_the_real_layers(name):
    sp = build_space(name)
    f = OpGraphFeaturizer(sp)
    archs = sp.sample(np.random.default_rng(1), 40)
    enc, fast = sp.encode(archs), f.encode(archs)
    assert (enc.choice == fast.choice).all() and (enc.res == fast.res).all() and (enc.fixed == fast.fixed).all()
    g = f(archs)
    macs_col = f.num_off + NUMERIC.index("macs")
    fwd, bwd = g.adjacency()
    for i, a in enumerate(archs):
        L = int(g.lengths[i])
        layers = sp.layers(a)
        x = g.x[i, :L].numpy()
        assert x[:, macs_col].sum() * f.norm["macs"] == pytest.approx(sum(layer_macs(l) for l in layers), rel=1e-5)
        assert not g.x[i, L:].any() and not g.mask[i, L:].any()
        # dense adjacency: chain edges plus a skip around every residual node, mean-normalised
        E = np.zeros((g.mask.shape[1],) * 2)
        for k in range(L - 1):
            E[k + 1, k] = 1
        for k in range(1, L - 1):
            E[k + 1, k - 1] = float(g.residual[i, k])
        assert np.allclose(fwd[i].numpy(), E / np.maximum(E.sum(1, keepdims=True), 1))
        assert np.allclose(bwd[i].numpy(), E.T / np.maximum(E.T.sum(1, keepdims=True), 1))
    if name != "resnet50":  # one node per real layer (the ResNet stem is one node)
        assert [int(n) for n in g.lengths] == [len(sp.layers(a)) for a in archs]


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("layers", [1, 2])
def test_gnn_forward_is_the_plain_message_passing_formula(space, layers):
    """The fast forward (gathered per-node tables, in-place ops, length-sorted batches) computes
    h <- h + act(W_s h + A_fwd W_f h + A_bwd W_b h), latency = sum over nodes of w.act(W_h h + W_x x) + b."""
    torch.manual_seed(0)
    f = OpGraphFeaturizer(space)
    g = f(space.sample(np.random.default_rng(0), 64))
    model = build_model("gnn", space, {"layers": layers}, featurizer=f)
    net = model.net
    with torch.no_grad():
        x, (fwd, bwd) = g.x, g.adjacency()
        h = net.act(net.inp(x))
        for ws, wf, wb in zip(net.self_w, net.fwd_w, net.bwd_w):
            h = h + net.act(ws(h) + fwd @ wf(h) + bwd @ wb(h))
        plain = (net.out(net.act(net.head_h(h) + net.head_x(x))).squeeze(-1) * g.mask).sum(1).numpy()
        assert np.allclose(net(g).numpy(), plain, atol=1e-5)
    assert np.allclose(model.predict_graphs(g, batch_size=16) / model.scale, plain, atol=1e-5)


def test_models_fit_better_than_a_constant(space, synthetic):
    archs, y = synthetic
    tr, dv, te = split_indices(len(archs), np.random.default_rng(0))
    pick = lambda idx: [archs[i] for i in idx]  # noqa: E731
    const = np.mean(np.abs(y[tr].mean() - y[te]) / y[te]) * 100
    mape = {}
    for kind in ("linear", "additive", "gnn", "rnn"):
        opts = TrainOptions(model=kind, max_epochs=15 if kind == "rnn" else 40, patience=40)
        model, info = fit_model(space, opts, (pick(tr), y[tr]), (pick(dv), y[dv]), seed=0)
        pred = model.predict(pick(te))
        mape[kind] = np.mean(np.abs(pred - y[te]) / y[te]) * 100
    assert const > 8
    assert mape["gnn"] < 0.35 * const and mape["additive"] < 0.5 * const and mape["linear"] < 0.6 * const
    assert mape["rnn"] < const


def test_additive_is_exact_on_lookup_table_latency(space):
    archs = space.sample(np.random.default_rng(3), 1500)
    y = note10_latency(space).evaluate(archs)
    m = build_model("additive", space, {"ridge": 0.01}).fit(archs[:1200], y[:1200])
    assert np.max(np.abs(m.predict(archs[1200:]) / y[1200:] - 1)) < 0.01


def test_train_options_are_checked():
    with pytest.raises(UserError, match=r"unknown predictor training option\(s\) \['epochs'\]"):
        TrainOptions.from_config({"epochs": 3})
    with pytest.raises(UserError, match="unknown latency model 'mlp'"):
        TrainOptions.from_config({}, model="mlp")
    with pytest.raises(UserError, match="split must be three positive fractions"):
        TrainOptions.from_config({"split": [0.5, 0.5, 0.5]})


# ------------------------------------------------------------------ task + checkpoint
def test_train_predictor_task_checkpoint_round_trip(cfg_factory, tmp_path, space, synthetic):
    archs, y = synthetic
    data = tmp_path / "data"
    write_csv(data / "ofa_mbv3_npu_lat_data.csv", archs, y)
    cfg = cfg_factory("task=train_predictor", "device=npu", f"paths.data_dir={data}", "tracking=local",
                      "task.max_epochs=40", "task.patience=40", "task.min_test_archs=30")
    out = execute(cfg, run_dir=tmp_path / "run")
    # the run keeps its own checkpoint; the first one is also the champion at the device's default path
    ckpt_path = tmp_path / "run" / "checkpoint" / "mbv3_npu_gnn.pt"
    assert out["checkpoint"] == ckpt_path and ckpt_path.is_file() and out["champion"]["promoted"]
    assert (data / "predictors" / "mbv3_npu_gnn.pt").read_bytes() == ckpt_path.read_bytes()
    for name in ("test_report.csv", "predictions.csv", "test_scatter.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    const = np.mean(np.abs(y.mean() - y) / y) * 100
    assert out["test"]["mape"] < 0.35 * const and out["test"]["spearman"] > 0.9

    # round trip: the checkpoint is plain data, loads with weights_only, predicts the same
    raw = torch.load(ckpt_path, weights_only=True)
    assert raw["space"]["name"] == "mbv3" and raw["target"]["unit"] == "ms" and raw["model"] == "gnn"
    assert raw["features"]["feature_version"] == 1 and raw["hparams"]["max_epochs"] == 40
    model, _ = load_checkpoint(ckpt_path, space)
    assert np.allclose(model.predict(archs[:50]), out["model"].predict(archs[:50]), rtol=1e-6)

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("blockprof/train_predictor").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "dev_mape")
    assert len(history) >= 2 and [m.step for m in history][:2] == [1, 2]
    assert run.data.metrics["test_mape"] == pytest.approx(out["test"]["mape"])
    logged = [m for m in client.search_logged_models([run.info.experiment_id]) if m.name == "latency_predictor"]
    assert len(logged) == 1
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model(logged[0].model_uri)  # the MLflow model answers like the checkpoint
    frame = pd.DataFrame({"net_str": [a.text for a in archs[:5]], "resolution": [a.resolution for a in archs[:5]]})
    assert np.allclose(np.asarray(served.predict(frame)), model.predict(archs[:5]), rtol=1e-6)
    mlflow.set_tracking_uri(None)

    # a checkpoint for another space or feature layout is refused with one line
    with pytest.raises(UserError, match="was trained for space mbv3"):
        load_checkpoint(ckpt_path, build_space("pn"))
    raw["features"]["feature_version"] = 0
    save_checkpoint(raw, tmp_path / "old.pt")
    with pytest.raises(UserError, match="feature version 0, this code uses 1"):
        load_checkpoint(tmp_path / "old.pt", space)


def test_predictor_device_trains_on_demand_then_loads(cfg_factory, tmp_path, space, synthetic):
    """`python run.py space=mbv3 device=npu` with the seed's CSV at the default path."""
    archs, y = synthetic
    data = tmp_path / "data"
    write_csv(data / "ofa_mbv3_npu_lat_data.csv", archs, y)
    over = ["task=evaluate", "device=npu", f"paths.data_dir={data}", "task.num_archs=50",
            "+device.latency.train.max_epochs=30", "+device.latency.train.patience=30", "device.latency.min_test_archs=30"]
    df = execute(cfg_factory(*over, "tracking=local"), run_dir=tmp_path / "run")
    ckpt = data / "predictors" / "mbv3_npu_gnn.pt"
    assert ckpt.is_file() and (df["latency"] > 0).all()
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("blockprof/evaluate").experiment_id])
    by_task = {r.data.tags["task"]: r for r in runs}
    assert set(by_task) == {"evaluate", "train_predictor"}
    assert by_task["train_predictor"].data.tags["mlflow.parentRunId"] == by_task["evaluate"].info.run_id
    mlflow.set_tracking_uri(None)

    # second run: loads the checkpoint, same predictions, batched through the metric
    cfg = cfg_factory(*over, "tracking=none")
    metric = build_metrics(cfg, space)["latency"]
    assert isinstance(metric, PredictedLatency) and metric.unit == "ms" and not metric.higher_is_better
    sample = space.sample(np.random.default_rng(0), 50)
    again = metric.evaluate(sample)
    assert again.shape == (50,) and (again > 0).all()
    model, _ = load_checkpoint(ckpt, space)
    assert np.allclose(again, model.predict(sample))


def test_missing_data_names_the_file_and_the_way_out(cfg_factory, tmp_path):
    cfg = cfg_factory("task=evaluate", "device=gpu", f"paths.data_dir={tmp_path / 'none'}", "tracking=none")
    with pytest.raises(UserError) as exc:
        execute(cfg, run_dir=tmp_path / "run")
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(tmp_path / "none" / "ofa_mbv3_gpu_lat_data.csv") in msg
    assert SEED_DATA_URL in msg and "task=measure space=mbv3 device=local_cpu" in msg


def test_missing_data_is_one_line_from_the_cli(tmp_path):
    p = run_cli(["task=evaluate", "space=pn", "device=cpu", f"paths.data_dir={tmp_path}",
                 f"paths.output_root={tmp_path / 'out'}", "tracking=none"], cwd=tmp_path)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: no latency data for space pn on device cpu")
    assert "ofa_pn_cpu_lat_data.csv" in errors[0] and "Traceback" not in p.stderr


# ------------------------------------------------------------------ GNN forward: packed chains
REFERENCE = Path(__file__).parent / "data" / "gnn_reference.pt"


@pytest.mark.parametrize("layers", ["1", "2"])
def test_gnn_predictions_match_the_dense_forward_on_a_trained_checkpoint(space, layers):
    """Trained GNNs (tests/data/make_gnn_reference.py) predict what the dense-adjacency forward
    predicted before the packed-chain rewrite, to float noise, by every entry point."""
    ref = torch.load(REFERENCE, weights_only=True)
    archs = [space.parse(t, r) for t, r in zip(ref["archs"], ref["resolutions"])]
    m = ref["models"][layers]
    model = build_model("gnn", space, m["hparams"])
    model.load_state(m["state"])
    before = m["before"].numpy()
    assert before.std() > 1.0  # a real spread of latencies, not a constant
    for got in (model.predict(archs), model.predict_graphs(model.featurizer(archs))):
        assert np.allclose(got, before, rtol=1e-5, atol=1e-4)
    # in small steps too (graph boundaries inside and between steps)
    model.net.chunk_nodes = 7
    assert np.allclose(model.predict(archs), before, rtol=1e-5, atol=1e-4)


def test_packed_chain_coefficients_are_the_dense_adjacency(space):
    """The band coefficients are exactly the non-zeros of `GraphBatch.adjacency`."""
    from blockprof.predictors.models import packed_chains
    for name in ("mbv3", "resnet50"):
        sp = build_space(name)
        g = OpGraphFeaturizer(sp)(sp.sample(np.random.default_rng(4), 50))
        fwd, bwd = g.adjacency()
        ids, coef, lengths = packed_chains(g)
        start = 0
        for i, L in enumerate(lengths.tolist()):
            c = coef[start:start + L].numpy()
            assert (ids[start:start + L] == g.node_ids[i, :L]).all()
            for k in range(L):
                assert c[k, 0] == pytest.approx(float(fwd[i, k, k - 1]) if k >= 1 else 0.0)
                assert c[k, 1] == pytest.approx(float(fwd[i, k, k - 2]) if k >= 2 else 0.0)
                assert c[k, 2] == pytest.approx(float(bwd[i, k, k + 1]) if k + 1 < L else 0.0)
                assert c[k, 3] == pytest.approx(float(bwd[i, k, k + 2]) if k + 2 < L else 0.0)
            start += L
