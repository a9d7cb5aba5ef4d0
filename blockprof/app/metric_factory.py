"""Config -> metric objects."""
from __future__ import annotations

import logging

from hydra.utils import get_method
from omegaconf import OmegaConf

from blockprof.common.errors import UserError
from blockprof.core.space import DesignSpace
from blockprof.core.registry import available_spaces, build_space, spaces_with
from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor
from blockprof.metrics.analytic import mmacs_metric, params_metric
from blockprof.metrics.base import Metric
from blockprof.metrics.lut import lookup_table_latency
from blockprof.metrics.measured import MeasuredLatency

log = logging.getLogger(__name__)


METRIC_NAMES = ("accuracy", "mmacs", "params_m", "latency")


def _unavailable(cfg, name: str, space_name: str) -> tuple[str, bool] | None:
    """Why `name` cannot be had for this space/device and whether a `skip_unavailable` set
    may drop it, or None. Latency is never dropped: a run without the device's latency
    would still carry the device's name (folder, tags, titles); a latency-free metric set
    (`metric=no_latency`) is the way to run a space the device does not cover."""
    if name == "accuracy":
        src = cfg.metric.accuracy.source
        if src not in ACCURACY_SOURCES:
            return f"unknown metric.accuracy.source '{src}' (choose from {list(ACCURACY_SOURCES)})", False
        if src == "predictor" and _space(cfg).capabilities.accuracy_predictor is None:
            return (f"no public accuracy predictor for space {space_name} (spaces with one: "
                    f"{', '.join(spaces_with('accuracy_predictor'))}); use metric.accuracy.source=supernet "
                    "or drop accuracy"), True
    if name == "latency":
        lat = cfg.device.latency
        if lat.source not in LATENCY_SOURCES:
            return f"unknown device.latency.source '{lat.source}' (choose from {list(LATENCY_SOURCES)})", False
        if lat.source == "lut":
            try:
                lut_latency(cfg, _space(cfg))
            except UserError as exc:
                return (f"device {cfg.device.name} has no latency lookup table for space {space_name} (spaces with "
                        f"one: {', '.join(_covered_spaces(cfg)) or 'none of the shipped ones'}): {exc}; pick a "
                        "device that covers it, or a metric set without latency (metric=no_latency)"), False
    return None


def _covered_spaces(cfg) -> list[str]:
    """The shipped spaces whose every layer the device's tables hold (read from the tables)."""
    out = []
    for name in available_spaces():
        try:
            lut_latency(cfg, build_space(name))
        except UserError:
            continue
        out.append(name)
    return out


def _space(cfg) -> DesignSpace:
    """The configured space (building one is cheap: no supernet)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    build = OmegaConf.masked_copy(cfg.space, [k for k in cfg.space if k != "hv_reference"])
    return instantiate(build, _convert_="all")


def check_metric_config(cfg, space_name: str, notify: bool = True) -> list[str]:
    """The metric names this run will score. Impossible combinations fail at start with
    one line, except that a set marked `skip_unavailable` (the default set) drops an
    accuracy source the space lacks, with a notice, so `python run.py space=pn` still
    scores what pn has. Latency is never dropped (see `_unavailable`)."""
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
        elif cfg.metric.get("skip_unavailable", False) and why[1]:
            if notify:
                log.warning("skipping metric %s: %s", n, why[0])
        else:
            raise UserError(why[0])
    if not kept:
        raise UserError("no configured metric is available for this space and device")
    return kept


def predictor_accuracy(cfg, space):
    return OFAAccuracyPredictor(space, cfg.metric.accuracy.get("checkpoint"))


def supernet_accuracy(cfg, space):
    from blockprof.metrics.supernet_accuracy import SupernetAccuracy  # heavy: ImageNet loaders
    return SupernetAccuracy.from_config(cfg, space)


def lut_latency(cfg, space):
    lat = cfg.device.latency
    table = lat.get("table")
    table = OmegaConf.to_container(table, resolve=True) if OmegaConf.is_config(table) else table
    table = _resolve_tables(table, cfg)
    return lookup_table_latency(space, table, str(lat.get("format") or "auto"), str(lat.get("transfer") or "none"))


def _resolve_tables(table, cfg):
    """Relative table paths are taken from the launch directory, as every configured path."""
    from blockprof.infra.tracking import resolve_path
    from blockprof.metrics.lut import ASSET_PREFIX

    def one(path):
        s = str(path)
        return s if s.startswith(ASSET_PREFIX) else str(resolve_path(s, cfg))
    if isinstance(table, list):
        return [{**t, "path": one(t["path"])} if isinstance(t, dict) and "path" in t else
                (t if isinstance(t, dict) else one(t)) for t in table]
    if isinstance(table, dict):
        return {**table, "path": one(table["path"])} if "path" in table else table
    return None if table is None else one(table)


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
