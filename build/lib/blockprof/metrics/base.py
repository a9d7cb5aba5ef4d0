"""The metric contract: every metric scores a whole list of archs in one call.

Each has a name, a unit and a direction. Additive metrics (MACs, params, lookup
table latency) are precomputed per (resolution, slot position, block) once, so
scoring is a numpy gather-and-sum over the space's `SlotEncoding`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.layers import Layer
from blockprof.core.space import Arch, DesignSpace, SlotEncoding


class Metric(ABC):
    name: str
    unit: str
    higher_is_better: bool
    slow: bool = False  # seconds per arch (timing, ImageNet evaluation): tasks score it in small, resumable batches

    def bind_run_dir(self, run_dir) -> None:
        """Where a metric that memoises its results (ImageNet accuracy) keeps them; most keep nothing."""

    @abstractmethod
    def evaluate(self, archs: Sequence[Arch]) -> np.ndarray:
        """One float per arch, in the metric's unit."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name} [{self.unit}], {'max' if self.higher_is_better else 'min'})"


class AdditiveMetric(Metric):
    """Sum of a per-layer cost: fixed part (stem/head) + one entry per active slot."""

    def __init__(self, space: DesignSpace, name: str, unit: str, higher_is_better: bool,
                 layer_cost: Callable[[Layer, int], float], scale: float = 1.0,
                 describe_missing: Callable[[Layer, int], str] | None = None):
        self.space, self.name, self.unit, self.higher_is_better = space, name, unit, higher_is_better
        fixed, slot = space.cost_tables(layer_cost)
        self.fixed, self.slot = fixed * scale, slot * scale
        self._layer_cost, self._describe_missing = layer_cost, describe_missing

    def evaluate_encoded(self, enc: SlotEncoding) -> np.ndarray:
        active = enc.choice >= 0
        idx = np.where(active, enc.choice, 0).astype(np.intp)
        S = idx.shape[1]
        per_slot = self.slot[enc.res[:, None], np.arange(S)[None, :], idx]
        vals = self.fixed[enc.res, enc.fixed] + np.where(active, per_slot, 0.0).sum(axis=1)
        return vals

    def evaluate(self, archs):
        vals = self.evaluate_encoded(self.space.encode(archs))
        bad = np.flatnonzero(np.isnan(vals))
        if bad.size:  # a lookup table has no entry for some layer of this arch: never skip it
            arch = archs[int(bad[0])]
            key = next((self._describe_missing(l, arch.resolution) for l in self.space.layers(arch)
                        if math.isnan(self._layer_cost(l, arch.resolution))), "?")
            raise UserError(f"{self.name}: lookup table has no entry '{key}' needed by {arch}")
        return vals


def score(metrics: dict[str, Metric], archs: Sequence[Arch]) -> dict[str, np.ndarray]:
    """Every metric over the whole batch."""
    return {name: np.asarray(m.evaluate(archs), dtype=np.float64) for name, m in metrics.items()}
