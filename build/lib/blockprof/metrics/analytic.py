"""Analytic MACs and parameter counts, exact against torchprofile and sum(numel)."""
from __future__ import annotations

from blockprof.core.layers import layer_macs, layer_params
from blockprof.core.space import DesignSpace
from blockprof.metrics.base import AdditiveMetric


def mmacs_metric(space: DesignSpace) -> AdditiveMetric:
    return AdditiveMetric(space, "mmacs", "MMACs", False, lambda l, r: layer_macs(l), 1e-6)


def params_metric(space: DesignSpace) -> AdditiveMetric:
    return AdditiveMetric(space, "params_m", "M", False, lambda l, r: layer_params(l), 1e-6)

