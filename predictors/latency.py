"""Latency through a trained predictor: the `predictor` source of npu/gpu/cpu/local_* devices.

    checkpoint there        -> load it (space and feature layout must match)
    checkpoint missing, CSV -> train it first (a nested MLflow run), save, use
    both missing            -> one line: which file, where the seed's CSVs are, how to measure
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.metrics.base import Metric
from blockprof.core.space import Arch, DesignSpace
from blockprof.infra.tracking import resolve_path
from blockprof.predictors.models import LatencyModel

SEED_DATA_URL = "https://drive.google.com/drive/folders/1qUqWzc3D3-1LmRxqQiy6u4CRWsmOymuF"


class PredictedLatency(Metric):
    """End-to-end latency (ms) from a trained model, one batched call for all archs."""
    name, unit, higher_is_better = "latency", "ms", False

    def __init__(self, model: LatencyModel, checkpoint: Path | None = None, info: dict | None = None,
                 threads: int = 1):
        self.model, self.checkpoint, self.info = model, checkpoint, dict(info or {})
        self.threads = int(threads)

    def evaluate(self, archs: Sequence[Arch]) -> np.ndarray:
        if len(archs) == 0:
            return np.zeros(0)
        import torch
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # 1 by default: on a busy 2-core box a 2nd thread mostly waits
        try:
            return np.asarray(self.model.predict(list(archs)), dtype=np.float64)
        finally:
            torch.set_num_threads(prev)

    def __repr__(self) -> str:
        return f"PredictedLatency({self.model.kind}, {self.checkpoint})"


class _TrainOnFirstUse(Metric):
    """Stands in until the first `evaluate`, then trains (so the training run nests
    under the task's MLflow run, which opens after metrics are built)."""
    name, unit, higher_is_better = "latency", "ms", False

    def __init__(self, cfg, space: DesignSpace, csv_path: Path, ckpt_path: Path):
        self.cfg, self.space, self.csv_path, self.ckpt_path = cfg, space, csv_path, ckpt_path
        self._metric: PredictedLatency | None = None

    def evaluate(self, archs):
        if self._metric is None:
            self._metric = _train_now(self.cfg, self.space, self.csv_path, self.ckpt_path)
        return self._metric.evaluate(archs)

    def __repr__(self) -> str:
        return f"PredictedLatency(untrained, from {self.csv_path})"


def missing_data_message(cfg, space: DesignSpace, csv_path: Path) -> str:
    return (f"no latency data for space {space.name} on device {cfg.device.name}: expected the CSV {csv_path} "
            f"(or a trained predictor at {resolve_path(cfg.device.latency.checkpoint, cfg)}). The seed's authors published "
            f"their NPU/GPU/CPU CSVs ({SEED_DATA_URL}, linked from the paper's code README); or measure your own "
            f"with `python run.py task=measure space={space.name} device=local_cpu`")


def load_latency_predictor(cfg, space: DesignSpace) -> Metric:
    """The `latency` metric of a predictor device (see module docstring)."""
    lat = cfg.device.latency
    ckpt_path = resolve_path(lat.checkpoint, cfg)
    csv_path = resolve_path(lat.csv, cfg)
    kind = str(lat.get("model", "gnn"))
    if ckpt_path.is_file():
        from blockprof.predictors.train import load_checkpoint
        model, ckpt = load_checkpoint(ckpt_path, space)
        if ckpt["model"] != kind:
            raise UserError(f"{ckpt_path} holds a '{ckpt['model']}' predictor but device.latency.model is '{kind}'")
        return PredictedLatency(model, ckpt_path, {k: ckpt[k] for k in ("data", "test", "created")},
                                threads=int(lat.get("infer_threads", 1)))
    if not csv_path.is_file():
        raise UserError(missing_data_message(cfg, space, csv_path))
    from blockprof.core.latency_csv import read_latency_csv
    read_latency_csv(csv_path, space)  # a malformed CSV fails now, before any run opens
    from blockprof.predictors.train import TrainOptions
    TrainOptions.from_config(lat.get("train"), model=kind)  # and so do bad training options
    return _TrainOnFirstUse(cfg, space, csv_path, ckpt_path)


def _train_now(cfg, space, csv_path: Path, ckpt_path: Path) -> PredictedLatency:
    from blockprof.infra.tracking import track_run
    from blockprof.predictors.train import TrainOptions, train_from_csv
    lat = cfg.device.latency
    opts = TrainOptions.from_config(lat.get("train"), model=str(lat.get("model", "gnn")))
    run_dir = _nested_run_dir(cfg)
    print(f"latency: no predictor at {ckpt_path}; training a {opts.model} on {csv_path} first", flush=True)
    with track_run(cfg, run_dir, "train_predictor", tags={"trained_on_demand": "true"}, nested=True) as tracker:
        result = train_from_csv(space, csv_path, str(cfg.device.name), opts, int(cfg.seed), ckpt_path,
                                tracker, run_dir)
    return PredictedLatency(result["model"], ckpt_path, {"test": result["test"]},
                            threads=int(lat.get("infer_threads", 1)))


def _nested_run_dir(cfg) -> Path:
    from blockprof.app.main import run_dir_of
    try:
        from hydra.core.hydra_config import HydraConfig
        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir) / "train_predictor"
    except Exception:
        pass
    return run_dir_of(cfg)


# ------------------------------------------------------------------ MLflow model
class _LatencyPyfuncImpl:
    """MLflow pyfunc flavour of a checkpoint: input a DataFrame with `net_str` and
    `resolution` columns (the seed's CSV columns), output latency in ms."""

    def load_context(self, context):
        import torch
        from blockprof.core.space import build_space
        from blockprof.predictors.train import load_checkpoint
        path = context.artifacts["checkpoint"]
        sp = torch.load(path, map_location="cpu", weights_only=True)["space"]
        self.space = build_space(sp["name"], resolutions=sp["resolutions"], width_mult=sp["width_mult"] or None)
        self.model, _ = load_checkpoint(path, self.space)

    def predict(self, context, model_input, params=None):
        archs = [self.space.parse(t, r) for t, r in zip(model_input["net_str"], model_input["resolution"])]
        return self.model.predict(archs)


def _pyfunc_model():
    """A PythonModel instance; mlflow is imported only when a model is logged."""
    import warnings
    import mlflow.pyfunc
    with warnings.catch_warnings():  # MLflow nags about type hints on predict(); input is a DataFrame
        warnings.simplefilter("ignore")
        cls = type("LatencyPyfunc", (_LatencyPyfuncImpl, mlflow.pyfunc.PythonModel), {})
    return cls()


def log_mlflow_model(tracker, ckpt_path: Path) -> None:
    """Log the checkpoint as an MLflow pyfunc model of the tracker's run (no-op without tracking)."""
    if not getattr(tracker, "enabled", False):
        return

    def log(mlflow):
        import logging
        import os
        import warnings
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # the cloudpickle notice
            mlflow.pyfunc.log_model(name="latency_predictor", python_model=_pyfunc_model(),
                                    artifacts={"checkpoint": str(ckpt_path)},
                                    pip_requirements=["torch", "numpy", "ofa", "blockprof"])
    tracker.call_mlflow(log)
