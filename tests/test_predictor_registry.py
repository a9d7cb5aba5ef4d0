"""Predictors as MLflow models: versions never overwritten, the champion gate, models:/ URIs,
init_from without hyperparameters, small CSVs refused. Real training, real SQLite stores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import write_latency_csv
from blockprof.core.registry import build_space
from blockprof.infra.models import main as registry_main
from blockprof.predictors.train import load_checkpoint

from conftest import run_cli, synthetic_latency

NAME = "blockprof-latency-mbv3-npu"
N_ARCHS = 500  # 50 test archs: the smallest CSV trained without task.allow_small_test
QUICK = ["task.max_epochs=12", "task.patience=12", "task.hidden=8"]


@pytest.fixture(scope="module")
def space():
    return build_space("mbv3")


@pytest.fixture(scope="module")
def synthetic(space):
    return synthetic_latency(space, N_ARCHS, seed=1)


def _csv(path, archs, y, device="npu"):
    return write_latency_csv(path, [(i, a, device, float(v)) for i, (a, v) in enumerate(zip(archs, y))])


def _store(tmp_path):
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}",
                        registry_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")


def test_small_csv_is_refused_in_one_line_unless_asked(cfg_factory, tmp_path, synthetic):
    archs, y = synthetic
    _csv(tmp_path / "six.csv", archs[:6], y[:6])
    over = ["task=train_predictor", "device=npu", f"task.csv={tmp_path / 'six.csv'}", f"paths.data_dir={tmp_path}",
            "tracking=local", *QUICK]
    with pytest.raises(UserError) as exc:
        execute(cfg_factory(*over), run_dir=tmp_path / "run")
    msg = str(exc.value)
    assert "\n" not in msg and "has 6 archs" in msg and "1 < 50" in msg and "task.allow_small_test=true" in msg
    assert not (tmp_path / "run").exists() and not (tmp_path / "predictors").exists()
    # ...and so is a predictor device's CSV that would be trained on first use
    _csv(tmp_path / "ofa_mbv3_npu_lat_data.csv", archs[:6], y[:6])
    with pytest.raises(UserError, match=r"has 6 archs.*device\.latency\.allow_small_test=true"):
        execute(cfg_factory("task=evaluate", "device=npu", f"paths.data_dir={tmp_path}", "task.num_archs=3",
                            "tracking=local"), run_dir=tmp_path / "ev")
    assert not (tmp_path / "ev").exists() and not (tmp_path / "predictors").exists()
    # asked for: it trains (and, with no champion to compare against, serves)...
    out = execute(cfg_factory(*over, "task.allow_small_test=true"), run_dir=tmp_path / "run2")
    assert out["test"]["n"] == 1 and out["champion"]["promoted"]
    assert (tmp_path / "predictors" / "mbv3_npu_gnn.pt").is_file()
    # ...but a 1-arch test set never replaces a champion
    again = execute(cfg_factory(*over, "task.allow_small_test=true", "task.max_epochs=40"), run_dir=tmp_path / "run3")
    assert not again["champion"]["promoted"] and "too small" in again["champion"]["why"]
    assert out["checkpoint"] == tmp_path / "run2" / "checkpoint" / "mbv3_npu_gnn.pt" and out["checkpoint"].is_file()


def test_versions_the_champion_gate_and_models_uris(cfg_factory, tmp_path, space, synthetic, capsys):
    archs, y = synthetic
    data = tmp_path / "data"
    _csv(data / "ofa_mbv3_npu_lat_data.csv", archs, y)
    base = ["task=train_predictor", "device=npu", f"paths.data_dir={data}", "tracking=local"]
    champion_file = data / "predictors" / "mbv3_npu_gnn.pt"

    good = execute(cfg_factory(*base, *QUICK), run_dir=tmp_path / "r1")
    assert good["model_version"] == "1" and good["champion"]["promoted"] and champion_file.is_file()
    # a worse model (1 epoch) of the same data: a new version and checkpoint, the champion stays
    bad = execute(cfg_factory(*base, "task.max_epochs=1", "task.hidden=8"), run_dir=tmp_path / "r2")
    assert bad["model_version"] == "2" and not bad["champion"]["promoted"]
    assert bad["test"]["mape"] > bad["champion"]["champion_mape"]
    assert good["checkpoint"].is_file() and bad["checkpoint"].is_file() and good["checkpoint"] != bad["checkpoint"]

    client = _store(tmp_path)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    v1 = client.get_model_version(NAME, "1")
    assert float(v1.tags["test_mape"]) == pytest.approx(good["test"]["mape"], rel=1e-3)
    assert v1.tags["test_n"] == "50" and v1.tags["csv_sha256"] == good["data"]["sha256"]
    assert len(v1.tags["git_commit"]) >= 7 and "test MAPE" in v1.description
    assert torch.load(champion_file, weights_only=True)["data"]["held_out"] == good["data"]["held_out"]

    # a run served by the alias (and by a version number) uses exactly that version
    m1, _ = load_checkpoint(good["checkpoint"], space)
    m2, _ = load_checkpoint(bad["checkpoint"], space)
    for uri, model in ((f"models:/{NAME}@champion", m1), (f"models:/{NAME}/2", m2)):
        df = execute(cfg_factory("task=evaluate", "device=npu", f"paths.data_dir={data}", "task.num_archs=20",
                                 "metric.names=[latency]", f"device.latency.checkpoint={uri}", "tracking=local"),
                     run_dir=tmp_path / f"ev{uri[-1]}")
        served = [space.parse(a, r) for a, r in zip(df["arch"], df["resolution"])]
        assert np.allclose(df["latency"].to_numpy(), model.predict(served), rtol=1e-5)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    served = {r.data.tags.get("latency.served_by") for r in runs if r.data.tags.get("task") == "evaluate"}
    assert served == {f"models:/{NAME}/1", f"models:/{NAME}/2"}  # each run says which version served it
    with pytest.raises(UserError, match=r"no such model version .* has versions \[1, 2\], aliases @champion"):
        execute(cfg_factory("task=evaluate", "device=npu", f"paths.data_dir={data}", "task.num_archs=5",
                            f"device.latency.checkpoint=models:/{NAME}/7", "tracking=local"), run_dir=tmp_path / "ev7")

    # the explicit command moves it; the listing shows both versions, their data, figures and alias
    assert registry_main(["--output-root", str(tmp_path / "outputs"), "champion", NAME, "2"]) == 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    capsys.readouterr()
    assert registry_main(["--output-root", str(tmp_path / "outputs"), "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0][:4] == ["name", "version", "aliases", "device"] and len(rows) == 3
    assert rows[2][:4] == [NAME, "2", "champion", "npu"] and "ofa_mbv3_npu_lat_data.csv" in rows[1]


def test_init_from_takes_the_architecture_from_the_checkpoint(cfg_factory, tmp_path, synthetic):
    archs, y = synthetic
    data = tmp_path / "data"
    _csv(data / "ofa_mbv3_npu_lat_data.csv", archs, y)
    _csv(data / "ofa_mbv3_gpu_lat_data.csv", archs, y * 0.5, device="gpu")
    src = execute(cfg_factory("task=train_predictor", "device=npu", f"paths.data_dir={data}", "tracking=local",
                              "task.max_epochs=5", "task.patience=5", "task.hidden=12", "task.layers=2"),
                  run_dir=tmp_path / "src")
    assert src["champion"]["promoted"]
    common = ["task=train_predictor", "device=gpu", f"paths.data_dir={data}", "tracking=local",
              "task.max_epochs=5", "task.patience=5", "task.train_archs=40"]
    out = execute(cfg_factory(*common, f"task.init_from=models:/{NAME}@champion"), run_dir=tmp_path / "ft")
    ck = torch.load(out["checkpoint"], weights_only=True)
    assert (ck["hparams"]["hidden"], ck["hparams"]["layers"]) == (12, 2)
    assert ck["data"]["init_from"]["checkpoint"].startswith(f"models:/{NAME}@champion (version 1)")
    with pytest.raises(UserError, match="hidden=12, layers=2; drop task.hidden"):
        execute(cfg_factory(*common, f"task.init_from={src['checkpoint']}", "task.hidden=16"),
                run_dir=tmp_path / "ft2")


def test_a_sweep_never_moves_the_champion(cfg_factory, tmp_path, synthetic):
    archs, y = synthetic
    data = tmp_path / "data"
    _csv(data / "ofa_mbv3_npu_lat_data.csv", archs, y)
    common = ["device=npu", f"paths.data_dir={data}", "tracking=local"]
    # a deliberately poor champion (1 epoch, forced): any trial of the sweep beats it
    execute(cfg_factory("task=train_predictor", *common, "task.max_epochs=1", "task.lr=1e-6", "task.hidden=8",
                        "task.promote=true",
                        "task.log_model=true"), run_dir=tmp_path / "first")
    champion_file = data / "predictors" / "mbv3_npu_gnn.pt"
    before = champion_file.read_bytes()
    p = run_cli(["-m", "hparams_search=predictor_mape", *common, f"paths.output_root={tmp_path / 'outputs'}",
                 "task.max_epochs=10", "task.patience=10",
                 "hydra.sweeper.n_trials=2", "task.promote=true"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    client = _store(tmp_path)
    versions = client.search_model_versions(f"name='{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    trials = [v for v in versions if v.tags.get("sweep") == "true"]
    assert len(trials) == 2
    first = next(v for v in versions if str(v.version) == "1")
    assert any(float(v.tags["test_mape"]) < float(first.tags["test_mape"]) for v in trials)  # one would win...
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"  # ...but the alias stays
    assert champion_file.read_bytes() == before
