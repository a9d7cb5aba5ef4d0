"""Latency measured by timing the real OFA subnet on this machine, through the shared
timing protocol (blockprof.metrics.timing) in one of the engines (blockprof.metrics.engines)."""
from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import numpy as np
import torch

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write_text
from blockprof.core.space import DesignSpace
from blockprof.metrics.base import Metric
from blockprof.metrics.engines import make_engine
from blockprof.metrics.timing import ChunkTimer, Protocol, reference_archs

logger = logging.getLogger(__name__)

# where a measured device's subnets run: this machine (`latency.via` unset), a board over
# SSH (blockprof.metrics.remote) or a vendor's timing tool (blockprof.metrics.command_tool)
VIAS = ("local", "ssh", "command")


def timing_via(lat) -> str:
    via = str(lat.get("via") or "local")
    if via not in VIAS:
        raise UserError(f"device.latency.via must be one of {list(VIAS)}, not '{via}'")
    return via


def engine_label(lat) -> str:
    """The engine a measured CSV records (a resumed CSV must keep it)."""
    via = timing_via(lat)
    if via == "ssh":
        return f"ssh:{lat.get('engine') or 'onnxruntime'}"
    if via == "command":
        return "command"
    return str(lat.get("engine") or "torch")


def timing_clock(lat, requested: str) -> str:
    """The protocol's clock: a vendor tool reports its own time (`tool`); elsewhere as asked."""
    return "tool" if timing_via(lat) == "command" else requested


def make_timing_engine(lat, space: DesignSpace, *, hw: str, threads: int, clock: str, batch_size: int, cache_dir):
    """The engine a `device.latency` node times in: local (blockprof.metrics.engines), a board
    over SSH (probed now: what the board lacks fails here) or a vendor's command."""
    via = timing_via(lat)
    if clock == "tool" and via != "command":
        raise UserError("clock=tool (the time a vendor's tool reports) is for device.latency.via=command; "
                        "use clock=cpu or wall")
    if via == "ssh":
        from blockprof.metrics.remote import SSHEngine
        return SSHEngine.from_config(lat, space, threads=threads, clock=clock, batch_size=batch_size,
                                     cache_dir=cache_dir)
    if via == "command":
        from blockprof.metrics.command_tool import CommandEngine
        return CommandEngine.from_config(lat, space, batch_size=batch_size, cache_dir=cache_dir)
    return make_engine(str(lat.get("engine") or "torch"), space, hw=hw, threads=threads, clock=clock,
                       batch_size=batch_size, cache_dir=cache_dir)


def machine_info(threads: int, device: str = "cpu") -> dict:
    info = {"torch": torch.__version__, "threads": threads, "device": device,
            "cpu": _cpu_model(), "python": platform.python_version()}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class MeasuredLatency(Metric):
    """Times the real OFA subnet (random weights) on this machine, in ms, with the same
    protocol as task=measure: fixed threads, CPU clock (1 thread, CPU engines), `chunk_size`
    archs timed in `rounds` interleaved rounds with `references` reference subnets in every
    round to rescale drift, `stat` over the rounds. The references are calibrated on the
    first call; with a run folder bound (`bind_run_dir`) the calibration is kept there, so a
    resumed profile stays on the same scale.

    A profile hands over `slots_per_call` (= `chunk_size`) slots per call, arch-major: a
    timing chunk then holds the variants of one base arch across those slots, timed in the
    same rounds, so drift between chunks shifts every slot's mean alike.
    """
    name, unit, higher_is_better = "latency", "ms", False
    slow = True  # profiling scores it in small, resumable batches

    def __init__(self, space: DesignSpace, device: str = "cpu", threads: int = 1, warmup: int = 3,
                 repeats: int = 10, stat: str = "median", batch_size: int = 1, progress: bool = False,
                 engine: str = "torch", clock: str | None = None, chunk_size: int = 25, references: int = 3,
                 cache_dir: str | Path | None = None, seed: int = 0, latency_node=None):
        clock = clock or ("cpu" if device == "cpu" and int(threads) == 1 else "wall")
        if device != "cpu":
            clock = "wall"  # CUDA: events
        if latency_node is not None:
            clock = timing_clock(latency_node, clock)
        self.proto = Protocol(hw=device, threads=int(threads), warmup=int(warmup), rounds=int(repeats), stat=stat,
                              clock=clock, chunk_size=int(chunk_size), references=int(references),
                              batch_size=int(batch_size)).check("measured latency")
        self.space, self.device, self.threads = space, device, int(threads)
        if latency_node is not None:  # the device node says where the subnets run (here, ssh, a command)
            self.engine = make_timing_engine(latency_node, space, hw=device, threads=int(threads), clock=clock,
                                             batch_size=int(batch_size), cache_dir=cache_dir)
        else:
            self.engine = make_engine(engine, space, hw=device, threads=int(threads), clock=clock,
                                      batch_size=int(batch_size), cache_dir=cache_dir)
        self.progress = progress
        self.slots_per_call = int(chunk_size)
        self.last_spread = np.zeros(0)
        self.last_factors: list[float] = []
        refs = reference_archs(space, int(seed), self.proto.references)
        self.timer = ChunkTimer(self.engine, self.proto, refs, None, np.random.default_rng([int(seed), 5]),
                                log=self._keep_raw)
        self._calib_path: Path | None = None
        self._raw: list[np.ndarray] = []

    @classmethod
    def from_config(cls, lat, space: DesignSpace, cache_dir=None, seed: int = 0, progress: bool = True):
        """From a `device.latency` node (blockprof/app/schema.py MeasuredLatencyConfig)."""
        return cls(space, device=lat.hw, threads=lat.threads, warmup=lat.warmup, repeats=lat.repeats,
                   stat=lat.stat, progress=progress, engine=lat.get("engine") or "torch", clock=lat.get("clock"),
                   chunk_size=lat.get("chunk_size", 25), references=lat.get("references", 3),
                   cache_dir=cache_dir, seed=seed, latency_node=lat)

    def bind_run_dir(self, run_dir) -> None:
        self._calib_path = Path(run_dir) / "timing_calibration.json"
        if self._calib_path.is_file() and self.timer.baseline is None:
            saved = json.loads(self._calib_path.read_text())
            if saved.get("archs") == [str(a) for a in self.timer.refs] and saved.get("engine") == self.engine.name:
                self.timer.baseline = list(saved["baseline_ms"])

    def _keep_raw(self, ids, archs, raw, what):
        self._raw.append(raw[:len(raw) - len(self.timer.refs)])

    def _calibrate(self) -> None:
        if self.timer.baseline is not None or not self.timer.refs:
            return
        self.timer.calibrate()
        if self._calib_path is not None:
            self._calib_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self._calib_path, json.dumps({
                "engine": self.engine.name, "archs": [str(a) for a in self.timer.refs],
                "baseline_ms": self.timer.baseline, "protocol": self.proto.__dict__}, indent=2))

    def evaluate(self, archs):
        from blockprof.common.progress import progress
        archs = list(archs)
        self._calibrate()
        vals, self._raw, self.last_factors = np.empty(len(archs)), [], []
        step = self.proto.chunk_size
        for c in progress(range(0, len(archs), step), desc="timing", enabled=self.progress):
            v, factor = self.timer(archs[c:c + step])
            vals[c:c + step] = v
            self.last_factors.append(factor)
        raw = np.concatenate(self._raw) if self._raw else np.zeros((0, 1))
        med = np.median(raw, axis=1)
        self.last_spread = (np.percentile(raw, 90, axis=1) - np.percentile(raw, 10, axis=1)) / med
        return vals
