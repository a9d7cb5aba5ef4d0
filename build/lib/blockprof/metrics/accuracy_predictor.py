"""OFA's public ImageNet accuracy predictors, batched."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from blockprof.common.assets import load_torch_asset
from blockprof.common.errors import UserError
from blockprof.core.space import Arch, DesignSpace, SlotEncoding
from blockprof.metrics.base import Metric


def mlp_layers(state: dict) -> tuple[list[tuple[torch.Tensor, torch.Tensor | None]], float]:
    """The linear layers of an OFA predictor checkpoint, in order, as (W^T, bias or None),
    and its `base_acc` offset (0 when absent). Works for both layouts OFA used: a flat
    nn.Sequential (`0.weight`, ...) and nested ones (`layers.0.0.weight`, ...)."""
    state = state.get("state_dict", state)
    base = state.get("base_acc")
    layers = []
    for key, w in state.items():
        if key.endswith(".weight") and w.dim() == 2:
            b = state.get(key[:-len("weight")] + "bias")
            layers.append((w.detach().float().t().contiguous(), None if b is None else b.detach().float().clone()))
    if not layers:
        raise UserError("accuracy predictor checkpoint holds no linear layers")
    for (w0, _), (w1, _) in zip(layers, layers[1:]):
        if w0.shape[1] != w1.shape[0]:
            raise UserError(f"accuracy predictor checkpoint: layer shapes {tuple(w0.shape)} -> {tuple(w1.shape)} do not chain")
    return layers, (0.0 if base is None else float(base.reshape(-1)[0]))


def _onednn_layers(layers) -> list | None:
    """The layers as oneDNN tensors (weights in its blocked layout, bias explicit), for
    oneDNN's linear kernel: about a fifth faster than addmm on these shapes. None
    where this torch build has no oneDNN; predictions then use addmm."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch._C._nn, "mkldnn_linear")):
        return None
    try:
        out = [(w.t().contiguous().to_mkldnn(), (torch.zeros(w.shape[1]) if b is None else b).to_mkldnn())
               for w, b in layers]
        with torch.inference_mode():  # one probe row: the kernel accepts these tensors
            torch._C._nn.mkldnn_linear(torch.zeros(1, layers[0][0].shape[0]).to_mkldnn(), *out[0]).to_dense()
        return out
    except RuntimeError:
        return None


class OFAAccuracyPredictor(Metric):
    """OFA's public ImageNet top-1 predictors, in %, for spaces whose family declares one
    (`space.capabilities.accuracy_predictor`).

    The space builds the predictor's input for the whole batch at once from its slot
    encoding, in the exact layout OFA's encoders use; the MLP (ReLU between linear
    layers, oneDNN's kernel) then runs in row chunks that keep its activations in cache,
    on `threads` torch threads (default one: matmuls this small gain little from a second thread,
    and on a busy machine each parallel matmul waits for the slowest thread).
    """
    name, unit, higher_is_better = "accuracy", "%", True
    CHUNK = 1024  # rows per matmul: 1024 x 400 float32 activations stay in cache

    def __init__(self, space: DesignSpace, explicit_path: str | None = None, threads: int | None = 1):
        self.space, self.threads = space, threads
        asset = space.capabilities.accuracy_predictor
        if asset is None:
            raise UserError(f"no public accuracy predictor for space '{space.name}' "
                            "(OFA published them for MobileNetV3 at width 1.2 and ResNet50); "
                            "use metric.accuracy.source=supernet or drop accuracy from the metrics")
        for r in space.resolutions:
            if r not in asset.resolutions:
                raise UserError(f"the {space.name} accuracy predictor knows resolutions {list(asset.resolutions)}, not {r}")
        self.layers, self.base = mlp_layers(load_torch_asset(asset.asset, explicit_path=explicit_path))
        self._onednn = _onednn_layers(self.layers)

    def features(self, enc: SlotEncoding) -> np.ndarray:
        return self.space.ofa_accuracy_features(enc)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The MLP over feature rows x [n, d] -> top-1 in % (float64)."""
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if x.shape[1] != self.layers[0][0].shape[0]:
            raise UserError(f"accuracy predictor expects {self.layers[0][0].shape[0]} features, "
                            f"space {self.space.name} encodes {x.shape[1]}")
        out = torch.empty(len(x), self.layers[-1][0].shape[1])
        last = len(self.layers) - 1
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for i in range(0, len(x), self.CHUNK):
                    h = x[i:i + self.CHUNK]
                    if self._onednn:
                        h = h.to_mkldnn()
                        for k, (w, b) in enumerate(self._onednn):
                            h = torch._C._nn.mkldnn_linear(h, w, b)
                            if k < last:
                                h = torch.relu(h)
                        h = h.to_dense()
                    else:
                        for k, (w, b) in enumerate(self.layers):
                            h = torch.addmm(b, h, w) if b is not None else h @ w
                            if k < last:
                                h.relu_()
                    out[i:i + self.CHUNK] = h
        finally:
            torch.set_num_threads(before)
        return (out.reshape(-1).numpy().astype(np.float64) + self.base) * 100.0

    def evaluate(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.predict(self.features(self.space.encode(archs)))
