"""Inference engines a measured latency is timed in: PyTorch eager (CPU, CUDA),
ONNX Runtime (CPU execution provider) and OpenVINO (CPU).

An engine turns an arch into a ready-to-run callable (`prepare(arch) -> run`) and
times one call of it (`time_once(run) -> ms`); the protocol in
blockprof.metrics.timing decides what to run when. Block costs differ per
engine (fusions, kernels, layouts), which is why each one is its own device.

ONNX engines export the OFA subnet with `torch.onnx.export` (TorchScript
exporter, opset 17) once per (arch, resolution) into a cache folder shared by
both engines; the export costs 0.7-2.4 s, timing it once more is cheap.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write
from blockprof.core.space import Arch, DesignSpace

logger = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime", "openvino")


class Engine:
    """prepare(arch) -> run(); time_once(run) -> ms; session(): the context timing runs in."""
    name = "engine"
    cpu_clock = time.thread_time   # the CPU clock that sees this engine's work (1 thread)

    def __init__(self, space: DesignSpace, threads: int = 1, clock: str = "cpu", batch_size: int = 1):
        self.space, self.threads, self.batch_size = space, int(threads), int(batch_size)
        self.clock = type(self).cpu_clock if clock == "cpu" else time.perf_counter

    def prepare(self, arch: Arch):
        raise NotImplementedError

    def time_once(self, run) -> float:
        t0 = self.clock()
        run()
        return (self.clock() - t0) * 1e3

    @contextlib.contextmanager
    def session(self):
        """Torch runs (or, for ONNX engines, exports) the subnets: on this engine's thread budget."""
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(prev)

    def input(self, arch: Arch) -> np.ndarray:
        return np.random.default_rng(0).standard_normal(
            (self.batch_size, 3, arch.resolution, arch.resolution)).astype(np.float32)

    def info(self) -> dict:
        return {"engine": self.name}


class TorchEngine(Engine):
    """PyTorch eager on the CPU (local_cpu) or a CUDA GPU (local_cuda, timed with CUDA events)."""
    name = "torch"

    def __init__(self, space, threads=1, clock="cpu", batch_size=1, hw: str = "cpu"):
        if hw == "cuda" and not torch.cuda.is_available():
            raise UserError("device local_cuda needs a CUDA GPU, and torch sees none on this machine")
        super().__init__(space, threads, clock, batch_size)
        self.hw = hw

    def prepare(self, arch):
        net = self.space.build_subnet(arch).to(self.hw)
        x = torch.from_numpy(self.input(arch)).to(self.hw)

        def run():
            with torch.inference_mode():
                return net(x)
        return run

    def time_once(self, run) -> float:
        if self.hw != "cuda":
            return super().time_once(run)
        # CUDA: events on the stream, so host-side launch jitter is not counted
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    def info(self):
        return {"engine": self.name, "torch": torch.__version__}


def onnx_path(cache_dir: Path, space: DesignSpace, arch: Arch, batch_size: int = 1) -> Path:
    key = hashlib.sha256(f"{space.name}|{arch.text}|{arch.resolution}|{batch_size}".encode()).hexdigest()[:20]
    return Path(cache_dir) / space.name / f"{key}_r{arch.resolution}_b{batch_size}.onnx"


ONNX_INPUT, ONNX_OUTPUT = "input", "logits"


def export_onnx(net: torch.nn.Module, resolution: int, path: str | os.PathLike, opset: int = 17,
                batch_size: int = 1) -> Path:
    """`net` as ONNX (TorchScript exporter, static input [batch, 3, r, r] named `input`,
    output `logits`), written atomically: the one exporter for engines and `task=export`."""
    import warnings
    x = torch.zeros(batch_size, 3, resolution, resolution)

    def write(tmp):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(net, (x,), tmp, dynamo=False, opset_version=opset,
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT])
    return atomic_write(path, write)


class _OnnxEngine(Engine):
    def __init__(self, space, threads=1, clock="cpu", batch_size=1, cache_dir: str | Path = "onnx_cache"):
        super().__init__(space, threads, clock, batch_size)
        self.cache_dir = Path(cache_dir)

    def onnx(self, arch: Arch) -> Path:
        """The cached export of `arch` (made on first use)."""
        path = onnx_path(self.cache_dir, self.space, arch, self.batch_size)
        if path.is_file():
            return path
        return export_onnx(self.space.build_subnet(arch), arch.resolution, path, batch_size=self.batch_size)


class OrtEngine(_OnnxEngine):
    """ONNX Runtime, CPU execution provider; with 1 intra-op thread it runs on the calling thread."""
    name = "onnxruntime"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        try:
            import onnxruntime
        except ImportError as e:  # pragma: no cover - a dependency
            raise UserError(f"device ort_cpu needs onnxruntime ({e}); pip install onnxruntime") from None
        self.ort = onnxruntime

    def prepare(self, arch):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        sess = self.ort.InferenceSession(str(self.onnx(arch)), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: self.input(arch)}
        return lambda: sess.run(None, feed)

    def info(self):
        return {"engine": self.name, "onnxruntime": self.ort.__version__}


class OpenVinoEngine(_OnnxEngine):
    """OpenVINO CPU plugin, one stream of `threads` threads, f32. Its inference runs in the
    plugin's worker threads, so the CPU clock is the process's (nothing else in the
    process is busy while a subnet runs)."""
    name = "openvino"
    cpu_clock = time.process_time

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        try:
            import openvino
        except ImportError as e:  # pragma: no cover - a dependency
            raise UserError(f"device openvino_cpu needs openvino ({e}); pip install openvino") from None
        self.ov = openvino
        self.core = openvino.Core()

    def prepare(self, arch):
        model = self.core.read_model(str(self.onnx(arch)))
        compiled = self.core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False})
        req = compiled.create_infer_request()
        x = self.input(arch)
        return lambda: req.infer({0: x})

    def info(self):
        return {"engine": self.name, "openvino": self.ov.__version__}


def make_engine(name: str, space: DesignSpace, *, hw: str = "cpu", threads: int = 1, clock: str = "cpu",
                batch_size: int = 1, cache_dir: str | Path | None = None) -> Engine:
    name = name or "torch"
    if name == "torch":
        return TorchEngine(space, threads, clock, batch_size, hw=hw)
    if hw != "cpu":
        raise UserError(f"engine {name} runs on the CPU here; set device.latency.hw=cpu")
    if name not in ENGINES:
        raise UserError(f"unknown device.latency.engine '{name}' (choose from {list(ENGINES)})")
    if cache_dir is None:
        raise UserError(f"engine {name} needs device.latency.cache_dir (where exported ONNX models are kept)")
    cls = OrtEngine if name == "onnxruntime" else OpenVinoEngine
    return cls(space, threads, clock, batch_size, cache_dir=cache_dir)
