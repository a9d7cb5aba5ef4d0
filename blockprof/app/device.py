"""A device as a thing of its own: its identity, and its cost scale for search.

Identity: a device's name is the name of its option, `conf/device/<name>.yaml` or
`<name>.yaml` in the user's `--config-dir`. The run folder, the MLflow tags, the figures'
titles and the predictor files all read `device.name`, so a run whose `device.name`
differs from the option it composed (`device.name=myphone` on the command line, or a
device file that names itself after another device) is refused at start: it would file
one device's latencies under another device's name.

Cost scale: the search's hypervolume reference and its default `search.cost_limits` for
latency belong to the device (a phone's milliseconds are not a desktop CPU's). A device
file may give them, for every space or per space; otherwise they are derived from the
device's own latencies for the space (`device_costs`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from blockprof.common.errors import UserError
from blockprof.core.space import DesignSpace

log = logging.getLogger(__name__)

COST_SAMPLE = 2000           # archs drawn to derive a device's cost scale
COST_SEED = 0                # fixed, not the run's seed: every run of a space on a device gets one scale
LIMIT_QUANTILES = (0.2, 0.4, 0.6, 0.8)
HV_MARGIN = 1.1              # the reference lies this far above the costliest sampled arch


# ------------------------------------------------------------------ identity
def hydra_device_choice() -> str | None:
    """The device option of the Hydra job this process runs (None outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        if not HydraConfig.initialized():
            return None
        return HydraConfig.get().runtime.choices.get("device")
    except Exception:  # noqa: BLE001 - no Hydra job: nothing to compare with
        return None


def check_identity(cfg: DictConfig, choice: str | None, overrides=()) -> None:
    """Refuse a run whose `device.name` is not the name of the device option it uses."""
    name = str(cfg.device.name)
    renamed = [o for o in overrides if str(o).lstrip("+~").split("=", 1)[0] == "device.name"]
    if choice is None:
        if renamed:
            raise UserError(_rename_message(name, "the device option"))
        return
    option = str(choice).rsplit("/", 1)[-1]
    if name != option:
        if renamed:
            raise UserError(_rename_message(name, f"device={option}"))
        raise UserError(f"device option {option} names itself '{name}': a device's name is its option, so "
                        f"set name: {option} in that file (or name the file {name}.yaml)")


def _rename_message(name: str, option: str) -> str:
    return (f"device.name={name} would label {option}'s latencies as {name}'s: a device's name is its option. "
            f"Add a device file {name}.yaml (in conf/device/ or your --config-dir, see docs/devices.md) and run "
            f"device={name}")


# ------------------------------------------------------------------ cost scale
@dataclass
class DeviceCosts:
    hv_reference: float | None
    cost_limits: list[float] | None
    origin: str  # "device file" | "derived from ..." | "none"


def _for_space(value, space_name: str):
    """A device-file value for this space: a plain value applies to every space, a mapping
    is keyed by space name."""
    if value is None:
        return None
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return value.get(space_name)
    return value


def _sig3(x: float, up: bool = False) -> float:
    """x to 3 significant digits (rounded up when `up`)."""
    if x <= 0 or not math.isfinite(x):
        return float(x)
    scale = 10 ** (math.floor(math.log10(x)) - 2)
    return float((math.ceil(x / scale) if up else round(x / scale)) * scale)


def scale_from_latencies(lat: np.ndarray) -> tuple[float, list[float]]:
    """(hypervolume reference, cost limits) from a sample of one device's latencies."""
    lat = np.asarray(lat, dtype=np.float64)
    lat = lat[np.isfinite(lat)]
    if not lat.size:
        raise UserError("no finite latency to derive the device's cost scale from")
    limits = sorted({_sig3(float(q)) for q in np.quantile(lat, LIMIT_QUANTILES)})
    return _sig3(float(lat.max()) * HV_MARGIN, up=True), limits


def _csv_latencies(cfg, space: DesignSpace) -> tuple[np.ndarray, str] | None:
    """A measured device's own measurements for the space, when its CSV exists."""
    from blockprof.core.latency_csv import read_latency_csv
    from blockprof.infra.tracking import resolve_path
    csv = cfg.device.latency.get("csv")
    if not csv:
        return None
    path = resolve_path(csv, cfg)
    if not path.is_file():
        return None
    try:
        rows = read_latency_csv(path, space)
    except UserError as exc:
        log.warning("cost scale: cannot use %s (%s)", path, exc)
        return None
    return np.array([r.latency_ms for r in rows], dtype=np.float64), f"{len(rows)} measurements in {path}"


def device_costs(cfg, space: DesignSpace, latency_metric=None) -> DeviceCosts:
    """The device's hypervolume reference and default latency cost limits for `space`:
    from the device file when it gives them, else derived from the device's data - the
    latency of a fixed seeded sample of the space (lookup tables, predictors), or a
    measured device's CSV of measurements - else none (the search falls back to its
    initial set and says so)."""
    lat_cfg = cfg.device.latency
    ref = _for_space(lat_cfg.get("hv_reference"), space.name)
    limits = _for_space(lat_cfg.get("cost_limits"), space.name)
    if ref is not None and limits is not None:
        return DeviceCosts(float(ref), [float(x) for x in limits], "device file")
    data = None
    if latency_metric is not None and not getattr(latency_metric, "slow", False):
        archs = space.sample(np.random.default_rng(COST_SEED), COST_SAMPLE)
        data = (np.asarray(latency_metric.evaluate(archs)), f"{COST_SAMPLE} seeded archs of {space.name}")
    elif latency_metric is not None:  # timing thousands of subnets for a scale is not worth it
        data = _csv_latencies(cfg, space)
    if data is None:
        return DeviceCosts(None if ref is None else float(ref),
                           None if limits is None else [float(x) for x in limits], "none")
    d_ref, d_limits = scale_from_latencies(data[0])
    origin = f"derived from {data[1]} on {cfg.device.name}"
    return DeviceCosts(float(ref) if ref is not None else d_ref,
                       [float(x) for x in limits] if limits is not None else d_limits, origin)
