"""Latency data of predictor devices: find it, fetch the seed's, train on first use.

    checkpoint there           -> load it (space, feature layout and model kind must match)
    checkpoint missing, CSV    -> train it at the first scoring (a nested MLflow run), save, use
    both missing, npu/gpu/cpu  -> fetch the seed's published CSV into the data folder, then as above
    both missing, otherwise    -> one line: which file, where the seed's CSVs are, how to measure

The seed's CSVs (`ofa_{space}_{device}_lat_data.csv`) are in the paper authors' public
Google Drive folder, fetched with gdown. ``$BLOCKPROF_SEED_DATA`` replaces that folder:
a local folder holding the files (a mirror, or tests), or another Drive folder URL.
A fetched file is checked as a seed CSV before it lands in the data folder.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.common.fileio import sha256_file
from blockprof.core.latency_csv import read_latency_csv
from blockprof.core.space import DesignSpace
from blockprof.infra.tracking import resolve_path
from blockprof.metrics.base import Metric
from blockprof.predictors.latency import SEED_DATA_URL, PredictedLatency, load_predicted_latency
from blockprof.predictors.train import MIN_TEST_ARCHS

log = logging.getLogger(__name__)

SEED_DATA_ENV = "BLOCKPROF_SEED_DATA"
SEED_DEVICES = ("npu", "gpu", "cpu")
# the seed's README: "the GPU and CPU predictor data for ResNet50 has not been publicly released"
SEED_UNPUBLISHED = {("resnet50", "gpu"), ("resnet50", "cpu")}
DOWNLOAD_TIMEOUT_S = 60


def seed_csv_name(space_name: str, device: str) -> str:
    return f"ofa_{space_name}_{device}_lat_data.csv"


def seed_data_source() -> str:
    """Where the seed's CSVs come from: ``$BLOCKPROF_SEED_DATA`` or the authors' Drive folder."""
    return os.environ.get(SEED_DATA_ENV) or SEED_DATA_URL


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def missing_data_message(cfg, space: DesignSpace, csv_path: Path, failure: str | None = None) -> str:
    """One line: the expected file, why it is not there, and the ways out."""
    name = seed_csv_name(space.name, str(cfg.device.name))
    ckpt = resolve_path(cfg.device.latency.checkpoint, cfg) if cfg.device.latency.get("checkpoint") else None
    msg = (f"no latency data for space {space.name} on device {cfg.device.name}: expected the CSV {csv_path}"
           + (f" (or a trained predictor at {ckpt})" if ckpt else ""))
    if failure:
        msg += f"; {failure}"
    return (msg + f". The seed's authors published their NPU/GPU/CPU CSVs in {SEED_DATA_URL} (linked from the "
            f"paper's code README): put {name} in {csv_path.parent}, or measure your own with "
            f"`python run.py task=measure space={space.name} device=local_cpu`")


def _reason(exc: BaseException) -> str:
    """A short, one-line cause of a failed download."""
    try:
        import requests
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return f"no network connection: {type(exc).__name__}"
    except ImportError:
        pass
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _fetch_local(folder: Path, name: str, staging: Path) -> None:
    hits = sorted(folder.rglob(name)) if folder.is_dir() else []
    if not folder.is_dir():
        raise UserError(f"${SEED_DATA_ENV} names {folder}, which is not a folder")
    if not hits:
        raise FileNotFoundError(f"{folder} holds no {name}")
    shutil.copyfile(hits[0], staging)


def _fetch_drive(url: str, name: str, staging: Path) -> None:
    import gdown
    listing = gdown.download_folder(url=url, skip_download=True, quiet=True, timeout=DOWNLOAD_TIMEOUT_S)
    hits = [f for f in listing or [] if Path(f.path).name == name]
    if not hits:
        held = sorted(Path(f.path).name for f in listing or [])
        raise FileNotFoundError(f"the folder holds no {name} (it holds {', '.join(held[:12]) or 'nothing'})")
    gdown.download(id=hits[0].id, output=str(staging), quiet=True, timeout=DOWNLOAD_TIMEOUT_S)
    if not staging.is_file() or staging.stat().st_size == 0:
        raise FileNotFoundError(f"the download of {name} came back empty")


def fetch_seed_csv(cfg, space: DesignSpace, dest: Path) -> Path:
    """Fetch the seed's CSV for this space and device into `dest`, checked as a seed CSV.
    Raises a one-line UserError when it cannot (offline, not published, malformed)."""
    device = str(cfg.device.name)
    name = seed_csv_name(space.name, device)
    source = seed_data_source()
    where = "the seed's Drive folder" if source == SEED_DATA_URL else f"{source} (${SEED_DATA_ENV})"
    if (space.name, device) in SEED_UNPUBLISHED:
        raise UserError(missing_data_message(
            cfg, space, dest, f"the seed's authors have not published {device} data for {space.name}"))
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.download")  # beside dest: the final rename is atomic
    log.info("latency: fetching %s from %s into %s", name, where, dest.parent)
    try:
        try:
            if _is_url(source):
                _fetch_drive(source, name, staging)
            else:
                _fetch_local(resolve_path(source, cfg), name, staging)
        except UserError:
            raise
        except Exception as exc:  # offline, Drive refusing, file not there: one line, never a traceback
            raise UserError(missing_data_message(
                cfg, space, dest, f"fetching it from {where} failed ({_reason(exc)})")) from None
        try:
            read_latency_csv(staging, space)
        except UserError as exc:
            raise UserError(f"{name} from {where} is not a valid seed CSV for space {space.name}: "
                            f"{str(exc).replace(str(staging), name)}") from None
        os.replace(staging, dest)
    finally:
        if staging.exists():
            staging.unlink()
        if not dest.exists():  # a failed fetch leaves no empty data folder behind
            for d in made:
                try:
                    d.rmdir()
                except OSError:
                    break
    log.info("latency: %s is in %s", name, dest.parent)
    return dest


def ensure_latency_csv(cfg, space: DesignSpace, csv_path: Path) -> Path:
    """`csv_path` if it is there; for the paper's devices, the seed's CSV fetched there
    (only when `csv_path` is where the seed's file belongs); else a one-line error."""
    if csv_path.is_file():
        return csv_path
    device = str(cfg.device.name)
    if device in SEED_DEVICES and csv_path.name == seed_csv_name(space.name, device):
        return fetch_seed_csv(cfg, space, csv_path)
    raise UserError(missing_data_message(cfg, space, csv_path))


class ServedLatency(PredictedLatency):
    """A predictor device's metric that, at its first scoring (inside the task's MLflow run,
    which opens after metrics are built), tags the run with the predictor serving it."""

    _announced = False

    @classmethod
    def of(cls, metric: PredictedLatency) -> "ServedLatency":
        return cls(metric.model, metric.checkpoint, metric.info, threads=metric.threads)

    def evaluate(self, archs):
        if not self._announced:
            self._announced = True
            from blockprof.infra.models import note_serving
            test = self.info.get("test") or {}
            note_serving({"latency.served_by": self.info.get("served_by") or str(self.checkpoint),
                          "latency.held_out_mape": f"{test['mape']:.4f}" if "mape" in test else "",
                          "latency.held_out_n": int(test["n"]) if "n" in test else ""})
        return super().evaluate(archs)


class TrainOnFirstUse(Metric):
    """Stands in until the first `evaluate`, then trains (so the training run nests
    under the task's MLflow run, which opens after metrics are built)."""
    name, unit, higher_is_better = "latency", "ms", False

    def __init__(self, cfg, space: DesignSpace, csv_path: Path, ckpt_path: Path):
        self.cfg, self.space, self.csv_path, self.ckpt_path = cfg, space, csv_path, ckpt_path
        self._metric: PredictedLatency | None = None
        self._run_dir: Path | None = None

    def bind_run_dir(self, run_dir) -> None:
        self._run_dir = Path(run_dir)

    def evaluate(self, archs):
        if self._metric is None:
            self._metric = self._train()
        return self._metric.evaluate(archs)

    def _train(self) -> PredictedLatency:
        from blockprof.infra.models import log_mlflow_model, log_training_data, promote, registered_model_name, \
            tag_version, version_tags
        from blockprof.infra.tracking import git_commit, track_run
        from blockprof.predictors.train import TrainOptions, train_from_csv
        cfg, lat = self.cfg, self.cfg.device.latency
        opts = TrainOptions.from_config(lat.get("train"), model=str(lat.get("model", "gnn")))
        run_dir = (self._run_dir or _fallback_run_dir(cfg)) / "train_predictor"
        device = str(cfg.device.name)
        log.info("latency: no predictor at %s; training a %s on %s first", self.ckpt_path, opts.model, self.csv_path)
        with track_run(cfg, run_dir, "train_predictor", tags={"trained_on_demand": "true"}, nested=True,
                       params={"seed": cfg.seed, "space.name": cfg.space.name, "device.name": device,
                               "task.csv": str(self.csv_path), "task.checkpoint": str(self.ckpt_path),
                               "task.model": opts.model}) as tracker:
            log_training_data(tracker, self.csv_path, device)
            # nothing is at ckpt_path (else it would have been loaded): writing it overwrites nothing
            result = train_from_csv(self.space, self.csv_path, device, opts, int(cfg.seed),
                                    self.ckpt_path, tracker, run_dir)
            result["small_test"] = result["test"]["n"] < int(lat.get("min_test_archs", MIN_TEST_ARCHS))
            name = registered_model_name(self.space.name, device)
            version = log_mlflow_model(tracker, self.ckpt_path, device)
            if version is not None:
                tag_version(cfg, name, version, version_tags(result, self.space.name, device, git_commit(), False,
                                                             {"run_id": tracker.run_id or "",
                                                              "trained_on_demand": "true"}))
                promote(cfg, self.space, name, version, self.ckpt_path, result, "auto", None,
                        use_registry=bool(getattr(tracker, "enabled", False)))
        info = {"test": result["test"], "data": result["data"],
                "served_by": f"models:/{name}/{version}" if version else str(self.ckpt_path)}
        return ServedLatency(result["model"], self.ckpt_path, info, threads=int(lat.get("infer_threads", 1)))

    def __repr__(self) -> str:
        return f"PredictedLatency(untrained, from {self.csv_path})"


def _fallback_run_dir(cfg) -> Path:
    from blockprof.app.rundir import run_dir_of
    return run_dir_of(cfg)


def predictor_latency_metric(cfg, space: DesignSpace) -> Metric:
    """The `latency` metric of a predictor device (see the module docstring)."""
    lat = cfg.device.latency
    kind = str(lat.get("model", "gnn"))
    from blockprof.infra.models import fetch_checkpoint, is_model_uri
    if is_model_uri(lat.checkpoint):  # a registered version or alias: resolved and downloaded once
        path, info = fetch_checkpoint(cfg, str(lat.checkpoint))
        metric = load_predicted_latency(path, space, kind, threads=int(lat.get("infer_threads", 1)),
                                        device=str(cfg.device.name))
        metric.info.update(registry=info, served_by=f"models:/{info['name']}/{info['version']}")
        log.info("latency: served by %s (version %s%s)", lat.checkpoint, info["version"],
                 f", held-out MAPE {float(info['tag.test_mape']):.2f} %" if info.get("tag.test_mape") else "")
        return ServedLatency.of(metric)
    ckpt_path = resolve_path(lat.checkpoint, cfg)
    if ckpt_path.is_file():
        metric = load_predicted_latency(ckpt_path, space, kind, threads=int(lat.get("infer_threads", 1)),
                                        device=str(cfg.device.name))
        sha = sha256_file(ckpt_path)
        metric.info["served_by"] = f"{ckpt_path} (sha256 {sha[:12]})"
        test = metric.info.get("test") or {}
        log.info("latency: served by %s%s", metric.info["served_by"],
                 f" (held-out MAPE {test['mape']:.2f} % on {int(test.get('n', 0))} archs)" if "mape" in test else "")
        return ServedLatency.of(metric)
    csv_path = resolve_path(lat.csv, cfg)
    if csv_path.is_file():
        read_latency_csv(csv_path, space, device=str(cfg.device.name))  # a malformed CSV fails now, before any run opens
    else:
        ensure_latency_csv(cfg, space, csv_path)  # fetched files are checked on the way in
    from blockprof.predictors.train import TrainOptions, check_test_size, split_indices
    opts = TrainOptions.from_config(lat.get("train"), model=kind)  # and so do bad training options
    if not lat.get("allow_small_test", False):  # a predictor tested on a handful of archs is never served
        import numpy as np
        n = len(read_latency_csv(csv_path, space, device=str(cfg.device.name)))
        _, _, te = split_indices(n, np.random.default_rng(int(cfg.seed)), opts.split)
        check_test_size(n, len(te), str(csv_path), "device.latency.allow_small_test",
                        int(lat.get("min_test_archs", MIN_TEST_ARCHS)))
    return TrainOnFirstUse(cfg, space, csv_path, ckpt_path)
