"""Training latency models: seeded split, early stopping on dev MAPE, checkpoints.

`train_from_csv` is the one path used by `task=train_predictor` and by a
predictor device whose checkpoint is missing (trained on demand).
"""
from __future__ import annotations

import logging

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from blockprof.common.errors import UserError
from blockprof.common.fileio import sha256_file
from blockprof.core.space import Arch, DesignSpace
from blockprof.predictors.features import OpGraphFeaturizer
from blockprof.predictors.models import MODEL_KINDS, AdditiveModel, LatencyModel, TorchLatencyModel, build_model

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "blockprof.latency_predictor"
CHECKPOINT_VERSION = 1


@dataclass
class TrainOptions:
    """Hyperparameters of one training run (also what a checkpoint records)."""
    model: str = "gnn"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)   # train / dev / test fractions
    max_epochs: int = 400
    patience: int = 60            # epochs without a better dev MAPE before stopping
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    hidden: int = 32
    layers: int = 1               # message-passing rounds (gnn) / GRU layers (rnn)
    ridge: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # additive: candidates, picked on dev MAPE
    loss: str = "rel_l1"          # rel_l1 (mean |relative error|, i.e. MAPE itself) | rel_mse
    threads: int = 1              # torch threads while fitting: small batches gain nothing from more,
                                  # and on a loaded 2-core machine 2 threads made training ~30x slower

    @classmethod
    def from_config(cls, node, **override) -> "TrainOptions":
        """From a config node (task or device.latency.train); unknown keys are an error."""
        raw = dict(node or {})
        raw.update({k: v for k, v in override.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise UserError(f"unknown predictor training option(s) {unknown} (known: {sorted(names)})")
        if "split" in raw:
            raw["split"] = tuple(float(x) for x in raw["split"])
        if "ridge" in raw:
            r = raw["ridge"]
            raw["ridge"] = tuple(float(x) for x in (r if isinstance(r, (list, tuple)) or hasattr(r, "__iter__") else [r]))
        opts = cls(**raw)
        opts.check()
        return opts

    def check(self) -> None:
        if self.loss not in ("rel_mse", "rel_l1"):
            raise UserError(f"unknown training loss '{self.loss}' (rel_mse or rel_l1)")
        if self.model not in MODEL_KINDS:
            raise UserError(f"unknown latency model '{self.model}' (choose from {list(MODEL_KINDS)})")
        if len(self.split) != 3 or any(f <= 0 for f in self.split) or not math.isclose(sum(self.split), 1.0, abs_tol=1e-6):
            raise UserError(f"split must be three positive fractions summing to 1, not {list(self.split)}")
        for k in ("max_epochs", "batch_size", "hidden", "layers", "threads"):
            if int(getattr(self, k)) < 1:
                raise UserError(f"training option {k} must be >= 1, not {getattr(self, k)}")

    def hparams(self) -> dict:
        d = dataclasses.asdict(self)
        d["split"], d["ridge"] = list(d["split"]), list(d["ridge"])
        return d


def split_indices(n: int, rng: np.random.Generator, fractions=(0.8, 0.1, 0.1)) -> tuple[np.ndarray, ...]:
    """Seeded train/dev/test split; each part gets at least one arch."""
    if n < 3:
        raise UserError(f"need at least 3 measured archs to split into train/dev/test, have {n}")
    perm = rng.permutation(n)
    n_dev = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_dev - n_test
    if n_train < 1:
        raise UserError(f"{n} archs are too few for split {list(fractions)}")
    return np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_dev]), np.sort(perm[n_train + n_dev:])


# A held-out set smaller than this cannot say whether one predictor beats another: with 30
# test archs and a 5 % MAPE the standard error of the MAPE is already ~0.7 points, the
# size of the gaps between competing models. 50 matches the committed 500-arch datasets'
# default 10 % test split.
MIN_TEST_ARCHS = 50


def check_test_size(n_rows: int, n_test: int, what: str, flag: str, min_test: int = MIN_TEST_ARCHS) -> None:
    """One-line refusal of a dataset whose test split is too small to test honestly."""
    if n_test < min_test:
        raise UserError(f"{what} has {n_rows} archs: its test split would hold {n_test} < {min_test} archs, "
                        f"too few to test a predictor honestly; measure more (task=measure task.num_archs="
                        f"{int(math.ceil(min_test * n_rows / max(n_test, 1)))} or more) or set {flag}=true")


def held_out_id(net_ids, texts, resolutions) -> str:
    """A short fingerprint of a test set: two predictors with the same one were tested on
    the same archs, so their test figures compare directly."""
    import hashlib
    h = hashlib.sha256()
    for i, t, r in sorted(zip(map(int, net_ids), texts, map(int, resolutions))):
        h.update(f"{i}|{t}|{r}\n".encode())
    return h.hexdigest()[:16]


def _mape(pred, y) -> float:
    return float(np.mean(np.abs(pred - y) / y) * 100)


def fit_model(space: DesignSpace, opts: TrainOptions, train: tuple[Sequence[Arch], np.ndarray],
              dev: tuple[Sequence[Arch], np.ndarray], seed: int = 0,
              on_epoch: Callable[[int, dict], None] | None = None,
              featurizer: OpGraphFeaturizer | None = None,
              init: LatencyModel | None = None) -> tuple[LatencyModel, dict]:
    """Fit one model; returns it and a summary (epochs, best dev MAPE, seconds).
    `init` (a gnn/rnn of the same kind and size, e.g. another device's): start from its
    weights instead of a random init, i.e. fine-tune it on this device's few archs."""
    if init is not None:
        check_init(init, opts)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(opts.threads))
    try:
        return _fit_model(space, opts, train, dev, seed, on_epoch, featurizer, init)
    finally:
        torch.set_num_threads(prev_threads)


def options_from_init(opts: TrainOptions, init_ckpt: dict, explicit: dict, where: str = "task.init_from") -> TrainOptions:
    """`opts` with the model kind and size (hidden, layers) of the checkpoint to fine-tune;
    `explicit` holds what the user set (None: not set), which must then agree."""
    kind, hp = init_ckpt["model"], init_ckpt.get("hparams", {})
    want = {"model": kind}
    if kind in ("gnn", "rnn"):
        want.update(hidden=int(hp["hidden"]), layers=int(hp["layers"]))
    clash = {k: v for k, v in want.items() if explicit.get(k) is not None and explicit[k] != v}
    if clash:
        raise UserError(f"{where} is a {kind} with " + ", ".join(f"{k}={v}" for k, v in want.items())
                        + f"; drop task.{'/task.'.join(sorted(clash))} (the architecture comes from the checkpoint)")
    return dataclasses.replace(opts, **want)


def check_init(init: LatencyModel, opts: TrainOptions, where: str = "task.init_from") -> None:
    """One-line refusals for a starting model that does not fit the requested one."""
    if not isinstance(init, TorchLatencyModel):
        raise UserError(f"{where}: only gnn/rnn predictors can be fine-tuned, this one is {init.kind}")
    if init.kind != opts.model:
        raise UserError(f"{where} holds a {init.kind} predictor, not {opts.model}; set task.model={init.kind}")
    if (int(init.hparams["hidden"]), int(init.hparams["layers"])) != (int(opts.hidden), int(opts.layers)):
        raise UserError(f"{where} has hidden={init.hparams['hidden']}, layers={init.hparams['layers']}; "
                        f"set task.hidden and task.layers to match")


def _fit_model(space, opts, train, dev, seed, on_epoch, featurizer, init=None):
    t0 = time.perf_counter()
    (a_tr, y_tr), (a_dev, y_dev) = train, dev
    y_tr, y_dev = np.asarray(y_tr, dtype=np.float64), np.asarray(y_dev, dtype=np.float64)
    if opts.model == "linear":
        model = build_model("linear", space).fit(a_tr, y_tr)
        info = {"dev_mape": _mape(model.predict(a_dev), y_dev), "epochs": 0}
    elif opts.model == "additive":
        best = None
        for i, lam in enumerate(opts.ridge, start=1):  # pick the ridge strength on dev
            m = AdditiveModel(space, {"ridge": lam}).fit(a_tr, y_tr)
            d = _mape(m.predict(a_dev), y_dev)
            if on_epoch:
                on_epoch(i, {"ridge": lam, "dev_mape": d})
            if best is None or d < best[1]:
                best = (m, d)
        model, info = best[0], {"dev_mape": best[1], "epochs": 0, "ridge": best[0].hparams["ridge"]}
    else:
        model, info = _fit_torch(space, opts, a_tr, y_tr, a_dev, y_dev, seed, on_epoch, featurizer, init)
    info["train_seconds"] = time.perf_counter() - t0
    return model, info


def _fit_torch(space, opts, a_tr, y_tr, a_dev, y_dev, seed, on_epoch, featurizer, init=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TorchLatencyModel(space, opts.model, {"hidden": opts.hidden, "layers": opts.layers}, featurizer)
    g_tr, g_dev = model.featurizer(a_tr), model.featurizer(a_dev)
    if init is not None:
        # the net predicts latency / scale: keep the source device's shape, and take the
        # scale that makes its predictions match this device's training archs on average
        model.net.load_state_dict(init.net.state_dict())
        ratio = y_tr / init.predict_graphs(g_tr)
        model.scale = float(init.scale * np.exp(np.mean(np.log(ratio))))
    else:
        model.scale = float(np.mean(y_tr))
        if hasattr(model.net, "init_readout"):
            model.net.init_readout(float(g_tr.lengths.float().mean()))
    yt = torch.as_tensor(y_tr / model.scale, dtype=torch.float32)
    net = model.net
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=opts.max_epochs, eta_min=opts.lr * 0.02)
    best_state, best_dev, best_epoch, since = None, math.inf, 0, 0
    n = len(yt)
    epoch = 0
    for epoch in range(1, opts.max_epochs + 1):
        net.train()
        perm = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for i in range(0, n, opts.batch_size):
            idx = perm[i:i + opts.batch_size]
            g = g_tr.index(idx).trimmed()
            target = yt[idx]
            pred = net(g)
            rel = (pred - target) / target  # relative error: MAPE is what counts
            loss = torch.mean(rel ** 2) if opts.loss == "rel_mse" else torch.mean(rel.abs())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        dev_mape = _mape(model.predict_graphs(g_dev), y_dev)
        if on_epoch:
            on_epoch(epoch, {"train_loss": total / n, "dev_mape": dev_mape, "lr": sched.get_last_lr()[0]})
        if dev_mape < best_dev - 1e-6:
            best_dev, best_epoch, since = dev_mape, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            since += 1
            if since >= opts.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return model, {"dev_mape": best_dev, "epochs": epoch, "best_epoch": best_epoch}


# ===================================================================== checkpoints
def checkpoint_dict(model: LatencyModel, opts: TrainOptions, data: dict, test_metrics: dict) -> dict:
    sp = model.space
    feat = model.featurizer if isinstance(model, TorchLatencyModel) else OpGraphFeaturizer(sp)
    return {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
        "model": model.kind, "hparams": opts.hparams(), "state": model.state(),
        "space": {"name": sp.name, "width_mult": float(getattr(sp, "width_mult", 0.0) or 0.0),
                  "resolutions": [int(r) for r in sp.resolutions]},
        "features": feat.signature(),
        "target": {"name": "latency", "unit": "ms"},
        "data": data, "test": {k: float(v) for k, v in test_metrics.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": str(torch.__version__),
    }


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Atomic: a reader never sees half a checkpoint."""
    from blockprof.common.fileio import atomic_write
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp), durable=True)


def load_checkpoint(path: str | os.PathLike, space: DesignSpace,
                    device: str | None = None) -> tuple[LatencyModel, dict]:
    """The model in a checkpoint, checked against `space` (name, width, feature layout)."""
    from blockprof.predictors.features import check_signature
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read latency predictor checkpoint {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}"[:300]) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a blockprof latency predictor checkpoint")
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} has checkpoint format {ckpt.get('format_version')}, this code reads "
                        f"{CHECKPOINT_VERSION}; retrain it with task=train_predictor")
    trained_on = (ckpt.get("data") or {}).get("device")
    if device is not None and trained_on and str(trained_on).lower() != str(device).lower():
        raise UserError(f"{path} predicts latency on device {trained_on}, not {device}; point "
                        f"device.latency.checkpoint at a predictor trained for {device}, or retrain")
    sp = ckpt["space"]
    width = float(getattr(space, "width_mult", 0.0) or 0.0)
    if sp["name"] != space.name or not math.isclose(sp["width_mult"], width):
        raise UserError(f"{path} was trained for space {sp['name']} (width {sp['width_mult']}), not "
                        f"{space.name} (width {width}); point device.latency.checkpoint elsewhere or retrain")
    feat = OpGraphFeaturizer(space)
    why = check_signature(ckpt["features"], feat.signature(), str(path))
    if why:
        raise UserError(f"{why}; retrain it with task=train_predictor (or delete it to retrain on demand)")
    hp = ckpt["hparams"]
    model = build_model(ckpt["model"], space, {"hidden": hp["hidden"], "layers": hp["layers"]}
                        if ckpt["model"] in ("gnn", "rnn") else None, featurizer=feat)
    model.load_state(ckpt["state"])
    return model, ckpt


# ===================================================================== from a CSV, tracked

def _measure_noise(csv_path: Path) -> dict:
    """The test-retest noise that task=measure recorded beside the CSV, if any."""
    import json
    meta = csv_path.with_name(csv_path.name + ".meta.json")
    try:
        r = json.loads(meta.read_text()).get("retest") or {}
        return {k: float(v) for k, v in r.items() if k.startswith("retest_") and isinstance(v, (int, float))}
    except (OSError, ValueError):
        return {}


def train_from_csv(space: DesignSpace, csv_path: str | os.PathLike, device: str, opts: TrainOptions, seed: int,
                   ckpt_path: str | os.PathLike, tracker, run_dir: str | os.PathLike,
                   init_from: str | os.PathLike | None = None, train_archs: int | None = None,
                   device_filter: str | None = None, min_test_archs: int | None = None,
                   init_label: str | None = None, small_test_flag: str = "task.allow_small_test",
                   test_ids: Sequence[int] | None = None) -> dict:
    """Read a seed-format CSV, split (seeded), fit with early stopping on dev MAPE, report on
    test, save the checkpoint atomically, log everything to `tracker`.

    Few-shot: `init_from` is another device's checkpoint (same space and features) to
    fine-tune from (its kind and size replace those of `opts`; `init_label` is how to name
    it, e.g. a models:/ URI); `train_archs` keeps only that many (seeded) archs of the
    training part. `min_test_archs`: refuse a CSV whose test split is smaller. `test_ids`:
    the net_ids held out for test (e.g. random archs beside a chosen training set); the
    rest is split into train/dev by the seeded split's proportions."""
    import pandas as pd
    from blockprof.core.latency_csv import read_latency_csv
    from blockprof.predictors.report import fidelity, scatter_figure

    csv_path, ckpt_path, run_dir = Path(csv_path), Path(ckpt_path), Path(run_dir)
    recs = read_latency_csv(csv_path, space, device=device, device_filter=device_filter)  # one device, no mixing
    archs = [r.arch for r in recs]
    y = np.array([r.latency_ms for r in recs])
    if test_ids is None:
        tr, dv, te = split_indices(len(recs), np.random.default_rng(seed), opts.split)
    else:
        held = set(int(i) for i in test_ids)
        te = np.array([i for i, r in enumerate(recs) if r.net_id in held], dtype=np.intp)
        rest = np.array([i for i, r in enumerate(recs) if r.net_id not in held], dtype=np.intp)
        if len(te) < 1 or len(rest) < 2:
            raise UserError(f"{csv_path}: {len(te)} held-out and {len(rest)} training archs; need 1 and 2 at least")
        perm = np.random.default_rng(seed).permutation(rest)
        n_dev = max(1, int(round(len(rest) * opts.split[1] / (opts.split[0] + opts.split[1]))))
        tr, dv = np.sort(perm[n_dev:]), np.sort(perm[:n_dev])
    if min_test_archs:
        check_test_size(len(recs), len(te), str(csv_path), small_test_flag, int(min_test_archs))
    init, init_info = None, None
    if init_from:
        init, ck = load_checkpoint(init_from, space)  # refuses another space / feature version
        opts = options_from_init(opts, ck, {})
        check_init(init, opts)
        init_info = {"checkpoint": str(init_label or init_from), "device": ck.get("data", {}).get("device"),
                     "sha256": sha256_file(Path(init_from))}
    if train_archs is not None:
        if int(train_archs) < 1:
            raise UserError(f"task.train_archs must be >= 1, not {train_archs}")
        if int(train_archs) < len(tr):
            tr = np.sort(np.random.default_rng([seed, 7]).choice(tr, size=int(train_archs), replace=False))
    pick = lambda idx: [archs[i] for i in idx]  # noqa: E731
    tracker.log_params({f"train.{k}": v for k, v in opts.hparams().items()})
    tracker.set_tags({"model": opts.model, "csv": str(csv_path)})
    log.info(f"train_predictor: {opts.model} on {len(recs)} archs of {csv_path.name} "
          f"(train {len(tr)} / dev {len(dv)} / test {len(te)})")

    def on_epoch(epoch, m):
        tracker.log_metrics(m, step=epoch)

    if init_info:
        tracker.set_tags({"init_from": init_info["checkpoint"], "init_device": str(init_info["device"])})
        log.info(f"train_predictor: fine-tuning from {init_from} (device {init_info['device']})")
    model, info = fit_model(space, opts, (pick(tr), y[tr]), (pick(dv), y[dv]), seed=seed, on_epoch=on_epoch,
                            init=init)
    pred = model.predict(archs)
    test = fidelity(y[te], pred[te])
    report = {**{f"test_{k}": v for k, v in test.items()},
              **{f"dev_{k}": v for k, v in fidelity(y[dv], pred[dv]).items() if k in ("mape", "spearman")},
              **{f"train_{k}": v for k, v in fidelity(y[tr], pred[tr]).items() if k in ("mape", "spearman")},
              "train_seconds": info["train_seconds"], "epochs": info["epochs"], **_measure_noise(csv_path)}
    data = {"csv": str(csv_path), "sha256": sha256_file(csv_path), "device": device, "device_filter": device_filter,
            "rows": len(recs),
            "seed": int(seed), "split_sizes": [len(tr), len(dv), len(te)],
            "latency_range_ms": [float(y.min()), float(y.max())],
            "held_out": held_out_id([recs[i].net_id for i in te], [archs[i].text for i in te],
                                    [archs[i].resolution for i in te])}
    if init_info:
        data["init_from"] = init_info
    ckpt = checkpoint_dict(model, opts, data, test)
    save_checkpoint(ckpt, ckpt_path)

    tracker.log_metrics(report)
    tracker.log_table(pd.DataFrame([{"model": opts.model, **report}]), "test_report.csv")
    split = np.array(["train"] * len(recs), dtype=object)
    split[dv], split[te] = "dev", "test"
    tracker.log_table(pd.DataFrame({"net_id": [r.net_id for r in recs], "arch": [a.text for a in archs],
                                    "resolution": [a.resolution for a in archs], "split": split,
                                    "measured_ms": y, "predicted_ms": pred}), "predictions.csv")
    fig = scatter_figure(y[te], pred[te], f"{space.name} / {device} / {opts.model}: test MAPE "
                                           f"{test['mape']:.2f} %, rho {test['spearman']:.3f}")
    tracker.log_figure(fig, "test_scatter.png")
    import matplotlib.pyplot as plt
    plt.close(fig)
    tracker.log_artifact(ckpt_path, "checkpoint")
    log.info(f"train_predictor: test MAPE {test['mape']:.2f} %, Spearman {test['spearman']:.3f}, "
          f"within +-10 % {test['within10']:.1f} % -> {ckpt_path}")
    return {"model": model, "test": test, "report": report, "checkpoint": ckpt_path, "info": info,
            "data": data, "test_archs": pick(te), "test_ms": y[te], "opts": opts}
