"""Devices side by side: check every device before any is profiled, and decide where each
device's latency comes from (`python -m blockprof.compare --devices ...`).

A lookup-table or predictor device is used as configured. A measured device times real
subnets, which for every slot of a space takes hours: it is profiled through its
calibrated predictor when one exists for (space, device) - a trained checkpoint, or the
device's `task=measure` CSV that the predictor is trained on first - and timed directly
only when the caller asks (`--time`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from blockprof.app.compose import compose
from blockprof.app.errors import one_line_user_error
from blockprof.app.main import space_from_config, validate
from blockprof.common.errors import UserError
from blockprof.infra.tracking import resolve_path


@dataclass
class DevicePlan:
    device: str
    overrides: list[str] = field(default_factory=list)  # added to the device's profile command
    source: str = ""                                     # where its latency comes from, for the panel title


def _overrides_for(device: str, sets: list[str]) -> list[str]:
    """`key=value` goes to every device, `device:key=value` to that device only."""
    out = []
    for x in sets:
        key = x.split("=", 1)[0]
        if ":" in key:
            if x.split(":", 1)[0] == device:
                out.append(x.split(":", 1)[1])
        else:
            out.append(x)
    return out


def plan_device(device: str, space: str, sets: list[str], config_dir: str | None = None,
                time_directly: bool = False) -> DevicePlan:
    """Compose and check one device's latency profile of `space`; raises UserError."""
    mine = _overrides_for(device, sets)
    base = ["task=profile", f"space={space}", f"device={device}", "metric.names=[latency]", "tracking=none"]
    try:
        cfg = compose([*base, *mine], config_dir=config_dir)
        validate(cfg)
    except Exception as exc:  # noqa: BLE001 - composition errors become one line, bugs stay bugs
        line = one_line_user_error(exc)
        if line is None:
            raise
        raise UserError(line if line.startswith(f"device {device} ") else f"device {device}: {line}") from None
    lat = cfg.device.latency
    if lat.source == "lut":
        from blockprof.app.metric_factory import lut_latency
        return DevicePlan(device, [], f"lookup table {Path(str(lut_latency(cfg, space_from_config(cfg)).source)).name}")
    if lat.source == "predictor":
        return DevicePlan(device, [], f"predictor {resolve_path(lat.checkpoint, cfg).name}")
    ckpt, csv = resolve_path(lat.checkpoint, cfg), resolve_path(lat.csv, cfg)
    if ckpt.is_file():
        return DevicePlan(device, ["device.latency.source=predictor"], f"predictor {ckpt.name}")
    if csv.is_file():
        return DevicePlan(device, ["device.latency.source=predictor"], f"predictor trained on {csv.name}")
    if time_directly:
        return DevicePlan(device, [], f"timed ({lat.engine}, {lat.hw})")
    raise UserError(f"device {device} times real subnets, and no predictor for {space} on it exists ({ckpt} and "
                    f"{csv} are missing): run `python run.py task=measure space={space} device={device}` first, "
                    f"or give --time to time every profiled subnet directly (hours for a whole space)")


def plan_devices(devices: list[str], space: str, sets: list[str], config_dir: str | None = None,
                 time_directly: bool = False) -> list[DevicePlan]:
    """Every device checked before any is profiled: the first bad one is the error."""
    if len(set(devices)) != len(devices):
        raise UserError(f"--devices names a device twice: {devices}")
    return [plan_device(d, space, sets, config_dir, time_directly) for d in devices]
