"""Latency through a trained predictor: the metric and its loading.

`PredictedLatency` scores archs with a checkpoint written by `task=train_predictor`;
`load_predicted_latency` opens one. Finding the data, fetching the seed's CSVs and
training on first use are the app's business (blockprof/app/latency_data.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, DesignSpace
from blockprof.metrics.base import Metric
from blockprof.predictors.models import LatencyModel

# The paper authors' public Google Drive folder with their NPU/GPU/CPU measurements
# (ofa_{space}_{device}_lat_data.csv), linked from the seed code's README.
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
        torch.set_num_threads(self.threads)  # 1 by default: on a loaded machine a 2nd thread mostly waits
        try:
            return np.asarray(self.model.predict(list(archs)), dtype=np.float64)
        finally:
            torch.set_num_threads(prev)

    def __repr__(self) -> str:
        return f"PredictedLatency({self.model.kind}, {self.checkpoint})"


def load_predicted_latency(ckpt_path: Path, space: DesignSpace, kind: str, threads: int = 1,
                           device: str | None = None) -> PredictedLatency:
    """The metric of a saved checkpoint; its space, feature layout, model kind (and device) must match."""
    from blockprof.predictors.train import load_checkpoint
    model, ckpt = load_checkpoint(ckpt_path, space, device=device)
    if ckpt["model"] != kind:
        raise UserError(f"{ckpt_path} holds a '{ckpt['model']}' predictor but device.latency.model is '{kind}'")
    return PredictedLatency(model, ckpt_path, {k: ckpt[k] for k in ("data", "test", "created")}, threads=threads)
