"""Config -> metric objects."""
from __future__ import annotations

import logging

from hydra.utils import get_method

from blockprof.common.errors import UserError
from blockprof.core.space import DesignSpace
from blockprof.core.registry import spaces_with
from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor
from blockprof.metrics.analytic import mmacs_metric, params_metric
from blockprof.metrics.base import Metric
from blockprof.metrics.lut import lookup_table_latency
from blockprof.metrics.measured import MeasuredLatency

log = logging.getLogger(__name__)


METRIC_NAMES = ("accuracy", "mmacs", "params_m", "latency")


def _unavailable(cfg, name: str, space_name: str) -> str | None:
    """Why `name` cannot be had for this space/device, or None."""
    if name == "accuracy":
        src = cfg.metric.accuracy.source
        if src not in ACCURACY_SOURCES:
            return f"unknown metric.accuracy.source '{src}' (choose from {list(ACCURACY_SOURCES)})"
        if src == "predictor" and _capabilities(cfg).accuracy_predictor is None:
            return (f"no public accuracy predictor for space {space_name} (spaces with one: "
                    f"{', '.join(spaces_with('accuracy_predictor'))}); use metric.accuracy.source=supernet "
                    "or drop accuracy")
    if name == "latency":
        lat = cfg.device.latency
        if lat.source not in LATENCY_SOURCES:
            return f"unknown device.latency.source '{lat.source}' (choose from {list(LATENCY_SOURCES)})"
        if lat.source == "lut" and _capabilities(cfg).lookup_table is None:
            return (f"device {cfg.device.name} has no latency lookup table for space {space_name} (spaces with "
                    f"one: {', '.join(spaces_with('lookup_table'))}); pick device=local_cpu or a predictor device")
    return None


def _capabilities(cfg):
    """What the configured space declares (building a space is cheap: no supernet)."""
    from hydra.utils import instantiate
    return instantiate(cfg.space, _convert_="all").capabilities


def check_metric_config(cfg, space_name: str, notify: bool = True) -> list[str]:
    """The metric names this run will score. Impossible combinations fail at start with
    one line, except in a set marked `skip_unavailable` (the default set), which drops
    them with a notice so `python run.py space=pn` still scores what pn has."""
    names = list(cfg.metric.names)
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown} in metric.names (choose from {list(METRIC_NAMES)})")
    if not names:
        raise UserError("metric.names is empty")
    kept = []
    for n in names:
        why = _unavailable(cfg, n, space_name)
        if why is None:
            kept.append(n)
        elif cfg.metric.get("skip_unavailable", False) and not why.startswith("unknown"):
            if notify:
                    log.warning("skipping metric %s: %s", n, why)
        else:
            raise UserError(why)
    if not kept:
        raise UserError("no configured metric is available for this space and device")
    return kept


def predictor_accuracy(cfg, space):
    return OFAAccuracyPredictor(space, cfg.metric.accuracy.get("checkpoint"))


def supernet_accuracy(cfg, space):
    from blockprof.metrics.supernet_accuracy import SupernetAccuracy  # heavy: ImageNet loaders
    return SupernetAccuracy.from_config(cfg, space)


def lut_latency(cfg, space):
    return lookup_table_latency(space, cfg.device.latency.get("table"))


def measured_latency(cfg, space):
    from blockprof.infra.tracking import resolve_path
    lat = cfg.device.latency
    return MeasuredLatency.from_config(lat, space, cache_dir=resolve_path(lat.get("cache_dir") or "outputs/cache/onnx", cfg),
                                       seed=int(cfg.seed))


def calibrated_latency(cfg, space):
    from blockprof.app.calibration import calibrated_latency_metric  # timed and fitted on first use
    return calibrated_latency_metric(cfg, space)


def predictor_latency(cfg, space):
    from blockprof.app.latency_data import predictor_latency_metric  # torch models, trained on demand
    return predictor_latency_metric(cfg, space)


# `metric.accuracy._target_` / `device.latency._target_` name one of the builders above
# (`<source>_accuracy`, `<source>_latency`): the sources a user can choose
ACCURACY_SOURCES = ("predictor", "supernet")
LATENCY_SOURCES = ("lut", "measured", "predictor", "calibrated")


def build_metrics(cfg, space: DesignSpace) -> dict[str, Metric]:
    """The configured metric set, by name, in config order."""
    out: dict[str, Metric] = {}
    for name in check_metric_config(cfg, space.name):
        if name == "mmacs":
            out[name] = mmacs_metric(space)
        elif name == "params_m":
            out[name] = params_metric(space)
        elif name == "accuracy":
            out[name] = get_method(cfg.metric.accuracy._target_)(cfg, space)
        elif name == "latency":
            out[name] = get_method(cfg.device.latency._target_)(cfg, space)
    return out
