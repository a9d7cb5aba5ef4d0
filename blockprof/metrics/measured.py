"""Latency measured by timing the real OFA subnet on this machine."""
from __future__ import annotations

import platform
import time

import numpy as np
import torch

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, DesignSpace
from blockprof.metrics.base import Metric


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
    """Times the real OFA subnet (random weights) on this machine, in ms.

    Protocol: fixed thread count, `warmup` untimed runs, then `repeats` timed runs
    of batch size 1; the reported value is `stat` (min or median) of the runs.
    The relative spread (p90 - p10) / median of each arch is kept in `last_spread`.
    """
    name, unit, higher_is_better = "latency", "ms", False
    slow = True  # profiling scores one slot per batch so an interrupted run resumes

    def __init__(self, space: DesignSpace, device: str = "cpu", threads: int = 1, warmup: int = 3,
                 repeats: int = 10, stat: str = "median", batch_size: int = 1, progress: bool = False):
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("device local_cuda needs a CUDA GPU, and torch sees none on this machine")
        if stat not in ("min", "median"):
            raise UserError(f"measured latency stat must be 'min' or 'median', not '{stat}'")
        self.space, self.device, self.threads = space, device, int(threads)
        self.warmup, self.repeats, self.stat, self.batch_size = int(warmup), int(repeats), stat, int(batch_size)
        self.progress = progress
        self.last_spread = np.zeros(0)

    def time_arch(self, arch: Arch) -> np.ndarray:
        """Raw timings (ms) of `repeats` runs of one arch."""
        net = self.space.build_subnet(arch).to(self.device)
        x = torch.randn(self.batch_size, 3, arch.resolution, arch.resolution, device=self.device)
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        times = np.empty(self.repeats)
        with torch.inference_mode():
            for _ in range(self.warmup):
                net(x)
            sync()
            for i in range(self.repeats):
                t0 = time.perf_counter()
                net(x)
                sync()
                times[i] = (time.perf_counter() - t0) * 1e3
        return times

    def evaluate(self, archs):
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            from blockprof.common.progress import progress
            vals, spread = np.empty(len(archs)), np.empty(len(archs))
            for i, a in enumerate(progress(archs, desc="timing", enabled=self.progress)):
                t = self.time_arch(a)
                med = float(np.median(t))
                vals[i] = float(t.min()) if self.stat == "min" else med
                spread[i] = (np.percentile(t, 90) - np.percentile(t, 10)) / med
            self.last_spread = spread
            return vals
        finally:
            torch.set_num_threads(prev)

