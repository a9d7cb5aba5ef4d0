"""task=train_predictor: fit a latency predictor on a seed-format CSV.

    python run.py task=train_predictor space=mbv3 device=npu            # data/ofa_mbv3_npu_lat_data.csv
    python run.py task=train_predictor space=mbv3 device=local_cpu task.model=rnn

Seeded train/dev/test split, early stopping on dev MAPE, per-epoch metrics, a test report
and a predicted-vs-measured scatter in MLflow.

Nothing is overwritten: each run writes its own checkpoint (in its run folder, or at a new
`task.checkpoint`) and registers it as a new version of the MLflow model
`blockprof-latency-<space>-<device>`, tagged with its test figures, the CSV's hash and the
git commit. The version becomes the `champion` (and is copied to the device's
`device.latency.checkpoint`, the file a run serves by default) only when it beats the current
champion on its own held-out archs (`task.promote=true` forces it, `false` forbids it);
trials of a Hydra sweep never move it.

A CSV whose test split holds fewer than `task.min_test_archs` (50) archs is refused unless
`task.allow_small_test=true`. `task.init_from` (a file or a models:/ URI) fine-tunes that
predictor, with its kind and size.

The CSV's device column must name the run's device: a CSV of another device, or of
several, is refused unless `task.device_filter=<name>` picks the rows to train on.
"""
from __future__ import annotations

import logging
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.infra.tracking import git_commit, resolve_path
from blockprof.app.task import Task
from blockprof.infra.models import (fetch_checkpoint, is_model_uri, log_mlflow_model, log_training_data, promote,
                                    registered_model_name, tag_version, version_tags)

log = logging.getLogger(__name__)
OPTION_KEYS = ("split", "max_epochs", "patience", "batch_size", "lr", "weight_decay", "hidden", "layers", "ridge",
               "loss", "threads")


def in_sweep() -> bool:
    """True inside a Hydra multirun job (a sweep trial): it never moves the champion."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # no Hydra (the Python API, tests)
        return False


def _init_checkpoint(ctx) -> tuple[Path | None, str | None]:
    """(local file, how to name it) of task.init_from: a file or a models:/ URI."""
    t = ctx.cfg.task
    if not t.get("init_from"):
        return None, None
    if is_model_uri(t.init_from):
        path, info = fetch_checkpoint(ctx.cfg, str(t.init_from), where="task.init_from")
        return path, f"{t.init_from} (version {info['version']})"
    path = resolve_path(t.init_from, ctx.cfg)
    if not path.is_file():
        raise UserError(f"task.init_from {path} does not exist (give a checkpoint written by task=train_predictor)")
    return path, str(path)


def _plan(ctx):
    """(CSV, the run's own checkpoint, the champion file or None, training options); raises UserError."""
    from blockprof.app.latency_data import ensure_latency_csv
    from blockprof.predictors.train import TrainOptions, load_checkpoint, options_from_init

    cfg, t = ctx.cfg, ctx.cfg.task
    lat = cfg.device.latency
    if "csv" not in lat and not t.get("csv"):
        raise UserError(f"device {cfg.device.name} has no latency CSV (device.latency.csv); "
                        "pick npu, gpu, cpu, local_cpu or local_cuda, or set task.csv")
    csv_path = resolve_path(t.get("csv") or lat.csv, cfg)
    model = t.get("model") or lat.get("model", "gnn")
    opts = TrainOptions.from_config({k: t[k] for k in OPTION_KEYS if t.get(k) is not None}, model=model)
    init_path, _ = _init_checkpoint(ctx)
    if init_path is not None:  # the architecture comes from the checkpoint
        _check_init_space(init_path, ctx.space)
        try:
            _, ck = load_checkpoint(init_path, ctx.space)
        except UserError as exc:
            raise UserError(f"task.init_from: {exc}") from None
        opts = options_from_init(opts, ck, {"model": t.get("model"), "hidden": t.get("hidden"),
                                            "layers": t.get("layers")})
    # the champion file: the device's default checkpoint, named for the model kind
    default = str(lat.get("checkpoint", "") or "")
    champion = None
    if default and not is_model_uri(default):
        champion = resolve_path(default.replace(f"_{lat.get('model', 'gnn')}.pt", f"_{opts.model}.pt"), cfg)
    if t.get("checkpoint"):
        own = resolve_path(t.checkpoint, cfg)
    else:
        own = Path(ctx.run_dir) / "checkpoint" / f"{ctx.space.name}_{cfg.device.name}_{opts.model}.pt"
    csv_path = ensure_latency_csv(cfg, ctx.space, csv_path)  # npu/gpu/cpu: the seed's CSV, fetched
    return csv_path, own, champion, opts


def _device_filter(cfg):
    f = cfg.task.get("device_filter")
    return None if f in (None, "") else str(f)


def validate(ctx) -> None:
    """Before the run opens: the CSV parses, its rows are for this device (or the filter
    picks some), there are enough of them to test honestly, and the checkpoint is new."""
    from blockprof.core.latency_csv import read_latency_csv
    from blockprof.predictors.train import check_test_size, split_indices
    import numpy as np

    csv_path, own, _, opts = _plan(ctx)
    t = ctx.cfg.task
    if t.get("checkpoint") and own.exists():
        raise UserError(f"task.checkpoint {own} exists: a training run never overwrites a predictor; "
                        "pick a new path or leave task.checkpoint unset (the run folder keeps it)")
    recs = read_latency_csv(csv_path, ctx.space, device=str(ctx.cfg.device.name),
                            device_filter=_device_filter(ctx.cfg))
    _, _, te = split_indices(len(recs), np.random.default_rng(int(ctx.cfg.seed)), opts.split)
    if not t.get("allow_small_test", False):
        check_test_size(len(recs), len(te), str(csv_path), "task.allow_small_test", int(t.get("min_test_archs", 50)))


def _check_init_space(path, space) -> None:
    """A checkpoint of another space is named as task.init_from (not as the device's own
    predictor), before its weights are read."""
    import math

    import torch
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_checkpoint words the refusal
        return
    sp = ck.get("space") if isinstance(ck, dict) else None
    width = float(getattr(space, "width_mult", 0.0) or 0.0)
    if isinstance(sp, dict) and (sp.get("name") != space.name
                                 or not math.isclose(float(sp.get("width_mult") or 0.0), width)):
        raise UserError(f"task.init_from {path} was trained for space {sp.get('name')} (width {sp.get('width_mult')}), "
                        f"not {space.name} (width {width}): fine-tune from a predictor of space {space.name}")


def run(ctx, tracker):
    from blockprof.predictors.train import train_from_csv

    cfg, t = ctx.cfg, ctx.cfg.task
    csv_path, own, champion, opts = _plan(ctx)
    init_path, init_label = _init_checkpoint(ctx)
    device = str(cfg.device.name)
    log_training_data(tracker, csv_path, device)
    min_test = int(t.get("min_test_archs", 50))
    result = train_from_csv(ctx.space, csv_path, device, opts, int(cfg.seed), own, tracker, ctx.run_dir,
                            init_from=init_path, init_label=init_label, train_archs=t.get("train_archs"),
                            device_filter=_device_filter(cfg),
                            min_test_archs=None if t.get("allow_small_test", False) else min_test)
    result["small_test"] = result["test"]["n"] < min_test
    sweep = in_sweep()
    name = registered_model_name(ctx.space.name, device)
    version = log_mlflow_model(tracker, own, device) if t.log_model else None
    if version is not None:
        tag_version(cfg, name, version, version_tags(result, ctx.space.name, device, git_commit(), sweep,
                                                     {"run_id": tracker.run_id or ""}))
    if sweep and t.get("promote"):
        log.warning("train_predictor: task.promote=true is ignored in a sweep: trials never move the champion")
    mode = "never" if sweep or t.get("promote") is False else "force" if t.get("promote") else "auto"
    decision = promote(cfg, ctx.space, name, version, own, result, mode, champion,
                       use_registry=bool(getattr(tracker, "enabled", False)))
    tracker.set_tags({"model_name": name, "model_version": version or "", "champion": str(decision["promoted"]).lower(),
                      "champion_decision": decision["why"]})
    where = f"{name} version {version}" if version else str(own)
    log.info("train_predictor: %s %s champion: %s", where, "is the" if decision["promoted"] else "is not the",
             decision["why"])
    result.update(model_name=name, model_version=version, champion=decision)
    return result


class TrainPredictorTask(Task):
    """Fit a latency predictor; its objective is the test MAPE."""
    groups = ("space", "device")
    # the training hyperparameters are logged as train.* (with the model's defaults filled in)
    unlogged_task_keys = ("split", "max_epochs", "patience", "batch_size", "lr", "weight_decay", "hidden",
                          "layers", "ridge", "loss", "threads", "csv", "checkpoint", "model")

    def validate(self, ctx) -> None:
        validate(ctx)

    def params(self, ctx):
        p = super().params(ctx)
        csv_path, ckpt_path, _, opts = _plan(ctx)
        p.update({"task.csv": str(csv_path), "task.checkpoint": str(ckpt_path)})  # the model: train.model
        init = self.cfg.get("init_from")
        if init:
            p["task.init_from"] = str(init) if is_model_uri(init) else str(resolve_path(init, ctx.cfg))
        return p

    def run(self, ctx, tracker):
        return run(ctx, tracker)

    def objective_value(self, result) -> float | None:
        values = {k: v for k, v in result.get("info", {}).items() if isinstance(v, (int, float))}  # dev_mape, ...
        values.update({f"test_{k}": v for k, v in result.get("test", {}).items()})
        return super().objective_value(values)
