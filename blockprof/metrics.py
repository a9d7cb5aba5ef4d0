"""Batched metrics: every metric scores a whole list of archs in one call.

Each has a name, a unit and a direction. Additive metrics (MACs, params, lookup
table latency) are precomputed per (resolution, slot position, block) once, so
scoring is a numpy gather-and-sum over the space's `SlotEncoding`.
"""
from __future__ import annotations

import math
import platform
import sys
import time
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import numpy as np
import torch

from blockprof.assets import load_torch_asset, load_yaml_asset
from blockprof.errors import UserError
from blockprof.layers import (
    ConvLayer, Layer, LinearLayer, MBConvLayer, PoolLayer, layer_macs, layer_params,
)
from blockprof.space import Arch, DesignSpace, MBConvSpace, ResNetSpace, SlotEncoding, build_space


class Metric(ABC):
    name: str
    unit: str
    higher_is_better: bool
    slow: bool = False  # seconds per arch (timing, ImageNet evaluation) rather than microseconds

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


def mmacs_metric(space: DesignSpace) -> AdditiveMetric:
    return AdditiveMetric(space, "mmacs", "MMACs", False, lambda l, r: layer_macs(l), 1e-6)


def params_metric(space: DesignSpace) -> AdditiveMetric:
    return AdditiveMetric(space, "params_m", "M", False, lambda l, r: layer_params(l), 1e-6)


# ------------------------------------------------------------------ lookup tables
def _shape(*dims) -> str:
    return "x".join(str(d) for d in dims)


def note10_key(layer: Layer) -> str:
    """OFA's Note10 table key of one MobileNetV3 layer."""
    if isinstance(layer, ConvLayer):
        role = "Conv" if layer.c_in == 3 else ("Conv_2" if layer.h_in == 1 else "Conv_1")
        return (f"{role}-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}")
    if isinstance(layer, MBConvLayer):
        return (f"expanded_conv-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}-expand:{layer.mid}"
                f"-kernel:{layer.kernel}-stride:{layer.stride}-idskip:{int(layer.residual)}"
                f"-se:{int(layer.se)}-hs:{int(layer.act == 'h_swish')}")
    if isinstance(layer, PoolLayer):
        return f"AvgPool2D-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}-output:{_shape(1, 1, layer.c_in)}"
    if isinstance(layer, LinearLayer):
        return f"Logits-input:{_shape(1, 1, layer.c_in)}-output:{layer.c_out}"
    raise TypeError(layer)


class LUTLatency(AdditiveMetric):
    """Sum of per-layer lookup-table entries (ms), as OFA's LatencyTable does."""

    def __init__(self, space: DesignSpace, name: str, layer_cost, describe):
        super().__init__(space, name, "ms", False, layer_cost, 1.0, describe)


def note10_latency(space: MBConvSpace, table_paths: dict | None = None) -> LUTLatency:
    tables = {r: load_yaml_asset(f"ofa/note10/{r}_lookup_table.yaml",
                                 explicit_path=(table_paths or {}).get(r)) for r in space.resolutions}

    def cost(layer, r):
        entry = tables[r].get(note10_key(layer))
        return float(entry["mean"]) if entry else float("nan")

    return LUTLatency(space, "latency", cost, lambda l, r: f"{note10_key(l)} @ {r}")


class ProxylessMobileLatency(LUTLatency):
    """ProxylessNAS mobile (Pixel 1) table for the `pn` space.

    The table was measured for ProxylessNAS w1.0 at 224 px with expand 3 and 6
    only. Each pn layer is mapped to the same position of that reference network
    (w1.0, 224 px); its entry is scaled by the MAC ratio of the real layer to the
    reference layer, and expand 4 is interpolated between 3 and 6. An estimate,
    not a measurement of w1.3 - documented as such.
    """

    def __init__(self, space: MBConvSpace, explicit_path: str | None = None):
        self.table = load_yaml_asset("proxylessnas/mobile_trim.yaml", explicit_path=explicit_path)
        ref = build_space("pn", resolutions=(224,), width_mult=1.0)
        # every layer pn can have, at each resolution -> the same position of the reference net
        self._ref_of: dict[tuple[Layer, int], Layer] = {}
        for r in space.resolutions:
            for u in range(space.n_units):
                for j in range(space.max_layers[u]):
                    for b in space.blocks:
                        self._ref_of[(space.block_layer(u, j, b, r), r)] = ref.block_layer(u, j, b, 224)
            mine = space._stem_layers(r) + space._head_layers(space.unit_input_sizes(r)[-1])
            theirs = ref._stem_layers(224) + ref._head_layers(ref.unit_input_sizes(224)[-1])
            self._ref_of.update({(a, r): b for a, b in zip(mine, theirs)})
        super().__init__(space, "latency", self._cost, lambda l, r: self._key(self._ref_of[(l, r)]))

    def _key(self, layer: Layer, expand: int | None = None) -> str:
        if isinstance(layer, ConvLayer):
            role = "Conv" if layer.c_in == 3 else "Conv_1"
            return (f"{role}-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                    f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}")
        if isinstance(layer, MBConvLayer):
            e = expand if expand is not None else (1 if not layer.expand_conv else round(layer.mid / layer.c_in))
            return (f"expanded_conv-input:{_shape(layer.h_in, layer.h_in, layer.c_in)}"
                    f"-output:{_shape(layer.h_out, layer.h_out, layer.c_out)}-expand:{e}"
                    f"-kernel:{layer.kernel}-stride:{layer.stride}-idskip:{int(layer.residual)}")
        if isinstance(layer, LinearLayer):
            return f"Logits-input:7x7x{layer.c_in}-output:{layer.c_out}"
        raise TypeError(layer)

    def _entry(self, key: str) -> float:
        e = self.table.get(key)
        return float(e["mean"]) if e else float("nan")

    def _cost(self, layer: Layer, r: int) -> float:
        if isinstance(layer, PoolLayer):
            return 0.0  # the table's Logits entry covers pooling + classifier
        ref = self._ref_of[(layer, r)]
        if isinstance(ref, MBConvLayer) and ref.expand_conv:
            e = round(ref.mid / ref.c_in)
            if e in (3, 6):
                lat = self._entry(self._key(ref, e))
            else:  # expand 4: linear between the measured 3 and 6
                lat3, lat6 = self._entry(self._key(ref, 3)), self._entry(self._key(ref, 6))
                lat = lat3 + (lat6 - lat3) * (e - 3) / 3
        else:
            lat = self._entry(self._key(ref))
        return lat * layer_macs(layer) / layer_macs(ref)


# ------------------------------------------------------------------ accuracy predictors
class OFAAccuracyPredictor(Metric):
    """OFA's public ImageNet top-1 predictors (MobileNetV3 w1.2; ResNet50), in %.

    Features are built for the whole batch at once from the slot encoding, in the
    exact layout OFA's encoders use, and the MLP runs once over the batch.
    """
    name, unit, higher_is_better = "accuracy", "%", True
    MBV3_RES = (112, 128, 144, 160, 176, 192, 208, 224)
    RESNET_RES = (128, 144, 160, 176, 192, 224, 240, 256)

    def __init__(self, space: DesignSpace, explicit_path: str | None = None):
        self.space = space
        if isinstance(space, MBConvSpace) and space.name == "mbv3" and space.width_mult == 1.2:
            sd = load_torch_asset("ofa/acc_predictor.pth", explicit_path=explicit_path)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(128, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
                torch.nn.Linear(400, 400), torch.nn.ReLU(), torch.nn.Linear(400, 1))
            self.net.load_state_dict(sd)
            self.base, self.res_list = 0.0, self.MBV3_RES
        elif isinstance(space, ResNetSpace):
            sd = load_torch_asset("ofa/ofa_resnet50_acc_predictor.pth", explicit_path=explicit_path)
            sd = sd.get("state_dict", sd)
            layers = []
            for i in range(3):
                layers += [torch.nn.Linear(82 if i == 0 else 400, 400), torch.nn.ReLU()]
            self.net = torch.nn.Sequential(*layers, torch.nn.Linear(400, 1, bias=False))
            # OFA nests each hidden layer in its own Sequential: layers.{i}.0.* -> flat index
            flat = {}
            for k, v in sd.items():
                if k == "base_acc":
                    continue
                parts = k.split(".")
                idx = int(parts[1]) * 2 if len(parts) == 4 else 6
                flat[f"{idx}.{parts[-1]}"] = v
            self.net.load_state_dict(flat)
            self.base, self.res_list = float(sd["base_acc"].reshape(-1)[0]), self.RESNET_RES
        else:
            raise UserError(f"no public accuracy predictor for space '{space.name}' "
                            "(OFA published them for mbv3 at width 1.2 and resnet50); "
                            "use metric.accuracy.source=supernet or drop accuracy from the metrics")
        for r in space.resolutions:
            if r not in self.res_list:
                raise UserError(f"the {space.name} accuracy predictor knows resolutions {list(self.res_list)}, not {r}")
        self.net.eval()
        self._res_map = np.array([self.res_list.index(r) for r in space.resolutions])

    def features(self, enc: SlotEncoding) -> np.ndarray:
        n = len(enc.res)
        if isinstance(self.space, ResNetSpace):
            return self._resnet_features(enc)
        S = enc.choice.shape[1]
        x = np.zeros((n, 128), dtype=np.float32)
        rows, slots = np.nonzero(enc.choice >= 0)
        b = enc.choice[rows, slots].astype(np.intp)
        x[rows, slots * 3 + b % 3] = 1  # kernel one-hot
        x[rows, 3 * S + slots * 3 + b // 3] = 1  # expand one-hot
        x[np.arange(n), 6 * S + self._res_map[enc.res]] = 1
        return x

    def _resnet_features(self, enc):
        sp: ResNetSpace = self.space
        n = len(enc.res)
        x = np.zeros((n, 82), dtype=np.float32)
        ar = np.arange(n)
        x[ar, self._res_map[enc.res]] = 1
        stem = enc.choice[:, 0].astype(np.intp)
        d = np.array(sp.stem_depths)[stem // 9]
        x[ar, 8 + (d > 0)] = 1
        # six width one-hots of 3: stem conv 0, stem conv 1, then units 1-4
        x[ar, 10 + (stem // 3) % 3] = 1
        x[ar, 13 + stem % 3] = 1
        for u in range(1, 5):  # a unit's width = w_out of its first layer
            first = enc.choice[:, sp.slot_offsets[u]].astype(np.intp)
            x[ar, 10 + 3 * (u + 1) + first % 3] = 1
        rows, slots = np.nonzero(enc.choice[:, 1:] >= 0)
        e_idx = enc.choice[rows, slots + 1] // 9
        x[rows, 28 + slots * 3 + e_idx] = 1
        return x

    @torch.no_grad()
    def evaluate(self, archs):
        x = torch.from_numpy(self.features(self.space.encode(archs)))
        return (self.net(x).reshape(-1).numpy().astype(np.float64) + self.base) * 100.0


# ------------------------------------------------------------------ measured
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
            from blockprof.progress import progress
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


# ------------------------------------------------------------------ factory
METRIC_NAMES = ("accuracy", "mmacs", "params_m", "latency")


def _unavailable(cfg, name: str, space_name: str) -> str | None:
    """Why `name` cannot be had for this space/device, or None."""
    if name == "accuracy":
        src = cfg.metric.accuracy.source
        if src not in ACCURACY_SOURCES:
            return f"unknown metric.accuracy.source '{src}' (choose from {list(ACCURACY_SOURCES)})"
        if src == "predictor" and space_name not in ("mbv3", "resnet50"):
            return (f"no public accuracy predictor for space {space_name} (OFA published mbv3 w1.2 and "
                    f"resnet50); use metric.accuracy.source=supernet or drop accuracy")
    if name == "latency":
        lat = cfg.device.latency
        if lat.source not in LATENCY_SOURCES:
            return f"unknown device.latency.source '{lat.source}' (choose from {list(LATENCY_SOURCES)})"
        if lat.source == "lut" and space_name not in ("mbv3", "pn"):
            return (f"device {cfg.device.name} has lookup tables for mbv3 (w1.2) and pn, not {space_name}; "
                    "pick device=local_cpu or a predictor device")
    return None


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
                    print(f"note: skipping metric {n}: {why}", file=sys.stderr)
        else:
            raise UserError(why)
    if not kept:
        raise UserError("no configured metric is available for this space and device")
    return kept


def _accuracy_predictor(cfg, space):
    return OFAAccuracyPredictor(space, cfg.metric.accuracy.get("checkpoint"))


def _accuracy_supernet(cfg, space):
    from blockprof.supernet_accuracy import SupernetAccuracy  # heavy: ImageNet loaders
    return SupernetAccuracy.from_config(cfg, space)


def _latency_lut(cfg, space):
    table = cfg.device.latency.get("table")
    if space.name == "pn":
        return ProxylessMobileLatency(space, table)
    paths = {r: f"{table}/{r}_lookup_table.yaml" for r in space.resolutions} if table else None
    return note10_latency(space, paths)


def _latency_measured(cfg, space):
    lat = cfg.device.latency
    return MeasuredLatency(space, device=lat.hw, threads=lat.threads, warmup=lat.warmup,
                           repeats=lat.repeats, stat=lat.stat, progress=True)


def _latency_predictor(cfg, space):
    from predictors.latency import load_latency_predictor  # torch models, trained on demand
    return load_latency_predictor(cfg, space)


ACCURACY_SOURCES = {"predictor": _accuracy_predictor, "supernet": _accuracy_supernet}
LATENCY_SOURCES = {"lut": _latency_lut, "measured": _latency_measured, "predictor": _latency_predictor}


def build_metrics(cfg, space: DesignSpace) -> dict[str, Metric]:
    """The configured metric set, by name, in config order."""
    out: dict[str, Metric] = {}
    for name in check_metric_config(cfg, space.name):
        if name == "mmacs":
            out[name] = mmacs_metric(space)
        elif name == "params_m":
            out[name] = params_metric(space)
        elif name == "accuracy":
            out[name] = ACCURACY_SOURCES[cfg.metric.accuracy.source](cfg, space)
        elif name == "latency":
            out[name] = LATENCY_SOURCES[cfg.device.latency.source](cfg, space)
    return out


def score(metrics: dict[str, Metric], archs: Sequence[Arch]) -> dict[str, np.ndarray]:
    """Every metric over the whole batch."""
    return {name: np.asarray(m.evaluate(archs), dtype=np.float64) for name, m in metrics.items()}
