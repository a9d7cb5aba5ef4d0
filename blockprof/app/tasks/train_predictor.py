"""task=train_predictor: fit a latency predictor on a seed-format CSV.

    python run.py task=train_predictor space=mbv3 device=npu            # data/ofa_mbv3_npu_lat_data.csv
    python run.py task=train_predictor space=mbv3 device=local_cpu task.model=rnn

Seeded train/dev/test split, early stopping on dev MAPE, the best checkpoint
(with its normalisation, space, feature version) at device.latency.checkpoint,
per-epoch metrics, a test report and a predicted-vs-measured scatter in MLflow.

The CSV's device column must name the run's device: a CSV of another device, or of
several, is refused unless `task.device_filter=<name>` picks the rows to train on.
"""
from __future__ import annotations

from blockprof.common.errors import UserError
from blockprof.infra.tracking import resolve_path
from blockprof.app.task import Task
from blockprof.infra.models import log_mlflow_model, log_training_data


def _plan(ctx):
    """(CSV, checkpoint path, training options) of the configured run; raises UserError."""
    from blockprof.app.latency_data import ensure_latency_csv
    from blockprof.predictors.train import TrainOptions

    cfg, t = ctx.cfg, ctx.cfg.task
    lat = cfg.device.latency
    if "csv" not in lat and not t.get("csv"):
        raise UserError(f"device {cfg.device.name} has no latency CSV (device.latency.csv); "
                        "pick npu, gpu, cpu, local_cpu or local_cuda, or set task.csv")
    csv_path = resolve_path(t.get("csv") or lat.csv, cfg)
    model = t.get("model") or lat.get("model", "gnn")
    default_ckpt = str(lat.get("checkpoint", "")).replace(f"_{lat.get('model', 'gnn')}.pt", f"_{model}.pt")
    ckpt = t.get("checkpoint") or default_ckpt
    if not ckpt:
        raise UserError("set task.checkpoint: where to write the trained predictor")
    ckpt_path = resolve_path(ckpt, cfg)
    csv_path = ensure_latency_csv(cfg, ctx.space, csv_path)  # npu/gpu/cpu: the seed's CSV, fetched
    keys = ("split", "max_epochs", "patience", "batch_size", "lr", "weight_decay", "hidden", "layers", "ridge",
            "loss", "threads")
    opts = TrainOptions.from_config({k: t[k] for k in keys if t.get(k) is not None}, model=model)
    return csv_path, ckpt_path, opts


def _device_filter(cfg):
    f = cfg.task.get("device_filter")
    return None if f in (None, "") else str(f)


def validate(ctx) -> None:
    """Before the run opens: the CSV parses, its rows are for this device (or the filter
    picks some), and there are enough of them to split."""
    from blockprof.core.latency_csv import read_latency_csv
    from blockprof.predictors.train import split_indices
    import numpy as np

    csv_path, _, opts = _plan(ctx)
    recs = read_latency_csv(csv_path, ctx.space, device=str(ctx.cfg.device.name),
                            device_filter=_device_filter(ctx.cfg))
    split_indices(len(recs), np.random.default_rng(int(ctx.cfg.seed)), opts.split)
    if ctx.cfg.task.get("init_from"):
        _check_init_from(resolve_path(ctx.cfg.task.init_from, ctx.cfg), ctx.space, opts)


def _check_init_from(path, space, opts) -> None:
    """The checkpoint to fine-tune from is there, readable, of this space and of the
    requested model: found before the run opens, and named as task.init_from."""
    import math

    import torch

    from blockprof.predictors.train import check_init, load_checkpoint
    if not path.is_file():
        raise UserError(f"task.init_from {path} does not exist (give a checkpoint written by task=train_predictor)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_checkpoint below words the refusal
        ck = None
    sp = ck.get("space") if isinstance(ck, dict) else None
    width = float(getattr(space, "width_mult", 0.0) or 0.0)
    if isinstance(sp, dict) and (sp.get("name") != space.name
                                 or not math.isclose(float(sp.get("width_mult") or 0.0), width)):
        raise UserError(f"task.init_from {path} was trained for space {sp.get('name')} (width {sp.get('width_mult')}), "
                        f"not {space.name} (width {width}): fine-tune from a predictor of space {space.name}")
    try:
        init, _ = load_checkpoint(path, space)
    except UserError as exc:
        raise UserError(f"task.init_from: {exc}") from None
    check_init(init, opts)


def run(ctx, tracker):
    from blockprof.predictors.train import train_from_csv

    cfg, t = ctx.cfg, ctx.cfg.task
    csv_path, ckpt_path, opts = _plan(ctx)
    device = str(cfg.device.name)
    log_training_data(tracker, csv_path, device)
    result = train_from_csv(ctx.space, csv_path, device, opts, int(cfg.seed), ckpt_path, tracker, ctx.run_dir,
                            init_from=resolve_path(t.init_from, cfg) if t.get("init_from") else None,
                            train_archs=t.get("train_archs"), device_filter=_device_filter(cfg))
    if t.log_model:
        log_mlflow_model(tracker, result["checkpoint"], device)
    return result


class TrainPredictorTask(Task):
    """Fit a latency predictor; its objective is the test MAPE."""
    groups = ("space", "device")

    def validate(self, ctx) -> None:
        validate(ctx)

    def run(self, ctx, tracker):
        return run(ctx, tracker)

    def objective_value(self, result) -> float | None:
        values = {k: v for k, v in result.get("info", {}).items() if isinstance(v, (int, float))}  # dev_mape, ...
        values.update({f"test_{k}": v for k, v in result.get("test", {}).items()})
        return super().objective_value(values)
