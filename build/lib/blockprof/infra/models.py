"""Latency predictors as MLflow models: a pyfunc flavour of a checkpoint (input: the
seed's `net_str`/`resolution` columns, output: ms), logged with its signature and an input
example, and registered under one name per space and device."""
from __future__ import annotations

from pathlib import Path

class _LatencyPyfuncImpl:
    """MLflow pyfunc flavour of a checkpoint: input a DataFrame with `net_str` and
    `resolution` columns (the seed's CSV columns), output latency in ms."""

    def load_context(self, context):
        import torch
        from blockprof.core.registry import build_space
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


def registered_model_name(space: str, device: str) -> str:
    """The MLflow model-registry name of a space/device's latency predictor."""
    return f"blockprof-latency-{space}-{device}"


def log_mlflow_model(tracker, ckpt_path: Path, device: str | None = None, examples: int = 5) -> None:
    """Log the checkpoint as an MLflow pyfunc model of the tracker's run, with its signature
    and an input example (the seed's `net_str`/`resolution` columns), registered under
    `registered_model_name(space, device)` when `device` is given (no-op without tracking)."""
    if not getattr(tracker, "enabled", False):
        return
    import numpy as np
    import pandas as pd
    import torch
    from blockprof.core.registry import build_space
    from blockprof.predictors.train import load_checkpoint

    sp = torch.load(ckpt_path, map_location="cpu", weights_only=True)["space"]
    space = build_space(sp["name"], resolutions=sp["resolutions"], width_mult=sp["width_mult"] or None)
    model, _ = load_checkpoint(ckpt_path, space)
    archs = space.sample(np.random.default_rng(0), examples)
    example = pd.DataFrame({"net_str": [a.text for a in archs], "resolution": [a.resolution for a in archs]})
    predicted = np.asarray(model.predict(archs), dtype=np.float64)

    def log(mlflow):
        import logging
        import os
        import warnings
        from mlflow.models import infer_signature
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in ("mlflow.pyfunc", "mlflow.models", "mlflow.store.model_registry"):
                logging.getLogger(name).setLevel(logging.ERROR)  # the cloudpickle / registry notices
            mlflow.pyfunc.log_model(name="latency_predictor", python_model=_pyfunc_model(),
                                    artifacts={"checkpoint": str(ckpt_path)},
                                    signature=infer_signature(example, predicted), input_example=example,
                                    registered_model_name=registered_model_name(sp["name"], device) if device else None,
                                    pip_requirements=["torch", "numpy", "ofa", "blockprof"])
    tracker.call_mlflow(log)


def log_training_data(tracker, csv_path: Path, device: str) -> None:
    """Record the latency CSV a predictor was trained on as the run's MLflow dataset input."""
    if not getattr(tracker, "enabled", False):
        return
    import pandas as pd

    def log(mlflow):
        df = pd.read_csv(csv_path)
        data = mlflow.data.from_pandas(df, source=str(Path(csv_path).resolve()), name=Path(csv_path).name)
        mlflow.log_input(data, context="training", tags={"device": device})
    tracker.call_mlflow(log)
