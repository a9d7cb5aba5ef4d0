"""Calibrated latency for the devices blockprof times itself: calibrate once, predict everywhere.

A measured device (`local_cpu`, `ort_cpu`, `openvino_cpu`, `local_cuda`) scores archs through
a GNN fitted on this machine's own timings (`device.latency.source=calibrated`, the default):

1. first use on a (space, device, machine): `task=measure`'s machinery times a seeded
   calibration set (`calib_archs`, resumable, with progress; its reference subnets'
   baselines and a test-retest pass go into the CSV's meta.json) into
   `<calib_dir>/<space>_<device>_<machine>.csv`;
2. the GNN is fitted on it (seeded train/dev/test split, `calib_split`) and checked on the
   held-out archs against the test-retest floor;
3. the checkpoint lands beside the CSV and is registered as a model version
   (`blockprof-latency-<space>-<device>-<machine>`, tagged like any trained predictor);
4. later runs on the same (space, device, machine) load it at once;
5. each run re-times the reference subnets briefly (`retime_rounds`); if every reference
   moved the same way and their median by more than `rescale_threshold` since calibration
   (a new boot, another load), the predictions are rescaled by that median; otherwise they
   stay exactly the calibrated values, so two runs give the same milliseconds.

`device.latency.source=measured` times every arch directly instead (the slow ground truth).
Every run says which predictor served it and its held-out MAPE (log line and MLflow tags).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from omegaconf import OmegaConf

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write_text
from blockprof.core.space import DesignSpace
from blockprof.infra.tracking import resolve_path
from blockprof.metrics.base import Metric
from blockprof.predictors.latency import PredictedLatency, load_predicted_latency

log = logging.getLogger(__name__)


def machine_identity(cfg, space: DesignSpace) -> tuple[str, dict]:
    """(short key, what it hashes): the space, the device and how it runs, and the machine."""
    from blockprof.metrics.measured import machine_info
    lat = cfg.device.latency
    info = machine_info(int(lat.get("threads", 1)), str(lat.get("hw", "cpu")))
    ident = {"space": space.name, "width_mult": float(getattr(space, "width_mult", 0.0) or 0.0),
             "resolutions": [int(r) for r in space.resolutions], "device": str(cfg.device.name),
             "engine": str(lat.get("engine") or "torch"), "hw": str(lat.get("hw", "cpu")),
             "threads": int(lat.get("threads", 1)), "cpu": info.get("cpu"), "gpu": info.get("gpu"),
             "torch": info.get("torch"), "host": platform.node()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10], ident


class CalibrationPlan:
    """Where a (space, device, machine)'s calibration lives, and how it is made."""

    def __init__(self, cfg, space: DesignSpace):
        lat = cfg.device.latency
        self.cfg, self.space, self.lat = cfg, space, lat
        self.key, self.identity = machine_identity(cfg, space)
        folder = resolve_path(lat.get("calib_dir") or "data/calibration", cfg)
        self.seed = int(lat.calib_seed) if lat.get("calib_seed") is not None else int(cfg.seed)
        stem = f"{space.name}_{cfg.device.name}_{self.key}" + (f"_s{self.seed}" if lat.get("calib_seed") is not None else "")
        self.csv = folder / f"{stem}.csv"
        self.checkpoint = folder / f"{stem}_gnn.pt"
        self.sidecar = folder / f"{stem}_gnn.json"
        self.archs = int(lat.get("calib_archs", 250))
        self.select = str(lat.get("calib_select", "random"))
        if self.select not in ("random", "coverage"):
            raise UserError(f"device.latency.calib_select must be random or coverage, not '{self.select}'")
        self.archs_list = folder / f"{stem}.{self.select}.archs.csv"
        if self.select != "random":  # another file set: a random and a chosen calibration never mix
            stem = f"{stem}_{self.select}"
            self.csv = folder / f"{stem}.csv"
            self.checkpoint = folder / f"{stem}_gnn.pt"
            self.sidecar = folder / f"{stem}_gnn.json"
        self.split = [float(x) for x in lat.get("calib_split", [0.7, 0.1, 0.2])]
        self.min_test = int(lat.get("min_test_archs", 50))
        if self.archs < 3:
            raise UserError(f"device.latency.calib_archs must be >= 3, not {self.archs}")

    def check_size(self) -> None:
        """The calibration set's held-out part must test honestly (unless allowed)."""
        from blockprof.predictors.train import check_test_size
        n_test = self.n_test()
        if not self.lat.get("allow_small_test", False):
            check_test_size(self.archs, n_test, f"the calibration set (device.latency.calib_archs={self.archs})",
                            "device.latency.allow_small_test", self.min_test)

    def n_test(self) -> int:
        return max(1, int(round(self.split[2] * self.archs)))

    def chosen_list(self) -> list[int] | None:
        """coverage: write the calibration list (held-out archs drawn at random, so the check
        is on archs like the ones a run scores; the rest chosen to cover the space,
        blockprof.predictors.selection) and return the held-out net_ids; random: None."""
        if self.select == "random":
            return None
        from blockprof.app.tasks.measure import sample_archs
        from blockprof.predictors.selection import choose
        import pandas as pd
        base_seed = int(np.random.default_rng(self.seed).integers(2 ** 31))
        pool = sample_archs(self.space, base_seed, 10 * self.archs)
        test = list(range(self.n_test()))  # the first ids of the seeded sample: random archs
        rest = list(range(self.n_test(), len(pool)))
        picked = [rest[i] for i in choose(self.space, [pool[i] for i in rest], self.archs - len(test),
                                          seed=self.seed)]
        archs = [pool[i] for i in test + picked]
        df = pd.DataFrame({"net_id": range(len(archs)), "arch": [a.text for a in archs],
                           "resolution": [a.resolution for a in archs]})
        self.archs_list.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.archs_list, df.to_csv(index=False))  # deterministic: a resumed run rewrites the same
        return test

    def measure_cfg(self):
        """The run's config with a task=measure node that times the calibration set."""
        lat = self.lat
        c = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        c.seed = self.seed  # task=measure samples (and picks its references) from it
        c.task = OmegaConf.create({
            "name": "measure", "num_archs": self.archs, "csv": str(self.csv), "resolution": None,
            "threads": int(lat.get("threads", 1)), "warmup": int(lat.get("calib_warmup", 1)),
            "rounds": int(lat.get("calib_rounds", 6)), "chunk_size": int(lat.get("chunk_size", 25)),
            "stat": str(lat.get("stat", "median")), "clock": str(lat.get("clock", "cpu")),
            "references": int(lat.get("references", 3)), "retest_archs": int(lat.get("calib_retest", 25)),
            "archs_csv": str(self.archs_list) if self.select != "random" else None})
        return c


class CalibratedLatency(Metric):
    """Latency through this machine's calibrated predictor (calibrated on first use)."""
    name, unit, higher_is_better = "latency", "ms", False

    def __init__(self, cfg, space: DesignSpace, plan: CalibrationPlan):
        self.cfg, self.space, self.plan = cfg, space, plan
        self._metric: PredictedLatency | None = None
        self._run_dir: Path | None = None
        self.factor = 1.0
        self.info: dict = {}

    def bind_run_dir(self, run_dir) -> None:
        self._run_dir = Path(run_dir)

    def evaluate(self, archs):
        if self._metric is None:
            self._metric = self._prepare()
        return self._metric.evaluate(archs) * self.factor

    @property
    def predictor(self) -> PredictedLatency:
        if self._metric is None:
            self._metric = self._prepare()
        return self._metric

    def _run_folder(self) -> Path:
        if self._run_dir is not None:
            return self._run_dir
        from blockprof.app.rundir import run_dir_of
        return run_dir_of(self.cfg)

    # -- first use: measure, fit, check, register
    def _calibrate(self) -> None:
        from blockprof.app.tasks.measure import meta_path, run as measure_run
        from blockprof.infra.models import (log_mlflow_model, promote, registered_model_name, tag_version,
                                            version_tags)
        from blockprof.infra.tracking import git_commit, track_run
        from blockprof.predictors.train import TrainOptions, train_from_csv
        p, cfg = self.plan, self.cfg
        device = str(cfg.device.name)
        run_dir = self._run_folder() / "calibration"
        log.info("latency: calibrating %s on this machine (%s): timing %d archs into %s, then fitting a GNN; "
                 "later runs reuse it", device, p.key, p.archs, p.csv)
        with track_run(cfg, run_dir, "calibrate", tags={"calibration": p.key}, nested=True,
                       params={"seed": cfg.seed, "space.name": self.space.name, "device.name": device,
                               "calibration.archs": p.archs, "calibration.csv": str(p.csv),
                               "calibration.select": p.select}) as tracker:
            test_ids = p.chosen_list()
            measure_run(SimpleNamespace(cfg=p.measure_cfg(), space=self.space), tracker)  # resumable
            opts = TrainOptions.from_config(self.plan.lat.get("train"), model="gnn", split=tuple(p.split))
            staging = p.checkpoint.with_name(f".fitting_{p.checkpoint.name}")
            result = train_from_csv(self.space, p.csv, device, opts, p.seed, staging, tracker, run_dir,
                                    min_test_archs=None if p.lat.get("allow_small_test", False) else p.min_test,
                                    small_test_flag="device.latency.allow_small_test", test_ids=test_ids)
            meta = json.loads(meta_path(p.csv).read_text())
            floor = (meta.get("retest") or {}).get("retest_mape")
            test = result["test"]
            check = "no floor" if floor is None else ("within" if test["mape"] <= 1.25 * floor else "above")
            if check == "above":
                log.warning("latency: the calibrated predictor's held-out MAPE %.2f %% is above 1.25x this machine's "
                            "test-retest floor %.2f %%: a noisy calibration; recalibrate on a quieter machine "
                            "(delete %s)", test["mape"], floor, p.checkpoint)
            tracker.log_metrics({"calib_test_mape": test["mape"], **({"calib_floor_mape": floor} if floor else {})})
            sidecar = {"format": "blockprof.calibration", "key": p.key, "select": p.select, "identity": p.identity,
                       "csv": str(p.csv), "reference": meta.get("reference"), "seed": p.seed,
                       "test_mape": test["mape"], "test_spearman": test["spearman"], "test_n": test["n"],
                       "floor_mape": floor, "floor_check": check}
            name = f"{registered_model_name(self.space.name, device)}-{p.key}"
            version = log_mlflow_model(tracker, staging, device, registered_name=name)
            if version is not None:
                result["small_test"] = test["n"] < p.min_test
                tag_version(cfg, name, version, version_tags(result, self.space.name, device, git_commit(), False,
                                                             {"run_id": tracker.run_id or "", "calibration": p.key,
                                                              "floor_mape": f"{floor:.4f}" if floor else "",
                                                              "floor_check": check}))
                promote(cfg, self.space, name, version, staging, result, "auto", None,
                        use_registry=bool(getattr(tracker, "enabled", False)))
                sidecar["model"] = f"models:/{name}/{version}"
            atomic_write_text(p.sidecar, json.dumps(sidecar, indent=2, sort_keys=True, default=str))
            staging.replace(p.checkpoint)  # last: a checkpoint there means a finished calibration

    def _prepare(self) -> PredictedLatency:
        p = self.plan
        if not p.checkpoint.is_file():
            with _calibration_lock(p.checkpoint):  # parallel jobs of a sweep: one calibrates, the others wait
                if not p.checkpoint.is_file():
                    self._calibrate()
        metric = load_predicted_latency(p.checkpoint, self.space, "gnn", threads=1, device=str(self.cfg.device.name))
        side = json.loads(p.sidecar.read_text()) if p.sidecar.is_file() else {}
        self.factor, measured = self._rescale(side)
        self.info = {"served_by": side.get("model") or str(p.checkpoint), "checkpoint": str(p.checkpoint),
                     "calibration": p.key, "held_out_mape": side.get("test_mape"), "held_out_n": side.get("test_n"),
                     "floor_mape": side.get("floor_mape"), "speed_factor": measured, "rescale": self.factor}
        mape = side.get("test_mape")
        log.info("latency: served by the calibrated predictor %s (held-out MAPE %s on %s archs; machine speed "
                 "x%.3f since calibration%s)", self.info["served_by"], f"{mape:.2f} %" if mape is not None else "?",
                 int(side["test_n"]) if side.get("test_n") is not None else "?", measured, f", predictions rescaled x{self.factor:.3f}"
                 if self.factor != 1.0 else "")
        from blockprof.infra.models import note_serving
        note_serving({"latency.served_by": self.info["served_by"], "latency.calibration": p.key,
                      "latency.held_out_mape": f"{mape:.4f}" if mape is not None else "",
                      "latency.rescale": f"{self.factor:.4f}", "latency.speed_factor": f"{measured:.4f}"})
        return metric

    # -- every run: is the machine as fast as at calibration?
    def _rescale(self, side: dict) -> tuple[float, float]:
        """(factor applied to predictions, measured speed factor) from a short re-timing of
        the calibration's reference subnets."""
        ref = side.get("reference") or {}
        rounds = int(self.plan.lat.get("retime_rounds", 2))
        if not ref.get("baseline_ms") or rounds <= 0:
            return 1.0, 1.0
        from blockprof.metrics.engines import make_engine
        from blockprof.metrics.timing import ChunkTimer, Protocol, reference_archs
        lat = self.plan.lat
        base_seed = int(np.random.default_rng(int(side.get("seed", self.cfg.seed))).integers(2 ** 31))
        refs = reference_archs(self.space, base_seed, len(ref["baseline_ms"]))
        if [str(a) for a in refs] != list(ref.get("archs", [])):
            log.warning("latency: the calibration's reference subnets are not reproducible here; not rescaling")
            return 1.0, 1.0
        hw = str(lat.get("hw", "cpu"))
        proto = Protocol(hw=hw, threads=int(lat.get("threads", 1)), warmup=1, rounds=rounds,
                         chunk_size=int(lat.get("chunk_size", 25)), stat=str(lat.get("stat", "median")),
                         clock=str(lat.get("clock", "cpu")) if hw == "cpu" else "wall",
                         references=len(refs)).check("calibration")
        engine = make_engine(str(lat.get("engine") or "torch"), self.space, hw=proto.hw, threads=proto.threads,
                             clock=proto.clock, batch_size=1,
                             cache_dir=resolve_path(lat.get("cache_dir") or "outputs/cache/onnx", self.cfg))
        now = ChunkTimer(engine, proto, refs, None, np.random.default_rng(base_seed)).calibrate()
        ratios = np.asarray(now) / np.asarray(ref["baseline_ms"])
        # the median reference, and only when every reference moved the same way: on a loaded
        # machine one reference alone jumped by 40 % between two runs while the others held
        speed = float(np.median(ratios))
        threshold = float(lat.rescale_threshold)
        agree = bool(np.all(ratios > 1)) or bool(np.all(ratios < 1))
        applied = speed if agree and abs(math.log(speed)) > math.log1p(threshold) else 1.0
        log.info("latency: reference subnets now %s x their calibration baselines", ", ".join(f"{r:.3f}" for r in ratios))
        return applied, speed

    def __repr__(self) -> str:
        return f"CalibratedLatency({self.plan.checkpoint})"


class _calibration_lock:
    """An exclusive lock file beside the checkpoint (released by the OS if the process dies)."""

    def __init__(self, ckpt: Path):
        self.path = ckpt.with_name(f".{ckpt.name}.lock")

    def __enter__(self):
        import fcntl
        import os
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("latency: another run is calibrating this device; waiting for it")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import os
        os.close(self.fd)
        return False


def calibrated_latency_metric(cfg, space: DesignSpace) -> Metric:
    """The `latency` metric of a measured device by default (see the module docstring).
    Cheap: nothing is timed or trained until the first evaluate."""
    plan = CalibrationPlan(cfg, space)
    if not plan.checkpoint.is_file():
        plan.check_size()  # a calibration set too small to test is refused before any run opens
    return CalibratedLatency(cfg, space, plan)


# ===================================================================== a search's final front, timed
def time_final_front(ctx, front, cost: str, work: Path, tracker) -> dict | None:
    """After a search scored by a calibrated predictor: time (up to `device.latency.verify_front`
    of) the final front's archs directly, report predicted-vs-measured error on them, and
    recompute the front on the measured values (`front_measured.csv`). None when the
    search's cost is not a calibrated latency or verification is off."""
    import pandas as pd
    from blockprof.common.fileio import atomic_write
    from blockprof.metrics.measured import MeasuredLatency
    from blockprof.predictors.report import fidelity
    from blockprof.search.pareto import non_dominated
    metric = ctx.metrics.get(cost)
    k = int(ctx.cfg.device.latency.get("verify_front", 0) or 0)
    if cost != "latency" or not isinstance(metric, CalibratedLatency) or k <= 0 or len(front) == 0:
        return None
    rows = front.sort_values(cost, kind="stable").reset_index(drop=True)
    if len(rows) > k:  # evenly along the front, both ends included
        rows = rows.iloc[np.unique(np.round(np.linspace(0, len(rows) - 1, k)).astype(int))].reset_index(drop=True)
    archs = [ctx.space.parse(a, int(r)) for a, r in zip(rows["arch"], rows["resolution"])]
    lat = ctx.cfg.device.latency
    timer = MeasuredLatency.from_config(lat, ctx.space, seed=int(ctx.cfg.seed),
                                        cache_dir=resolve_path(lat.get("cache_dir") or "outputs/cache/onnx", ctx.cfg))
    timer.bind_run_dir(work / "front_timing")
    (work / "front_timing").mkdir(parents=True, exist_ok=True)
    log.info("search: timing %d archs of the final front directly on %s", len(archs), ctx.cfg.device.name)
    t0 = time.perf_counter()
    measured = np.asarray(timer.evaluate(archs), dtype=np.float64)
    predicted = rows[cost].to_numpy(dtype=np.float64)
    fid = fidelity(measured, predicted)
    out = rows.rename(columns={cost: "latency_predicted"})
    out["latency_measured"] = measured
    out["error_pct"] = (predicted - measured) / measured * 100
    out["on_measured_front"] = non_dominated(out["accuracy"].to_numpy(), measured)
    path = atomic_write(work / "front_measured.csv", lambda p: out.to_csv(p, index=False))
    tracker.log_artifact(path)
    summary = {"front_measured_n": float(len(archs)), "front_measured_mape": fid["mape"],
               "front_measured_spearman": fid["spearman"], "front_measured_seconds": time.perf_counter() - t0,
               "front_measured_front_size": float(out["on_measured_front"].sum())}
    tracker.log_metrics({k_: v for k_, v in summary.items() if math.isfinite(v)})
    log.info("search: predicted vs measured on %d front archs: MAPE %.2f %%, Spearman %.3f (held-out MAPE of the "
             "predictor %s); %d of them stay on the front recomputed on measured values -> %s", len(archs),
             fid["mape"], fid["spearman"], f"{metric.info.get('held_out_mape'):.2f} %"
             if metric.info.get("held_out_mape") is not None else "?", int(out["on_measured_front"].sum()), path)
    return {**summary, "table": out}
