"""`accuracy` from the pretrained OFA supernet: cut each subnet, re-calibrate its
BatchNorm statistics on a seeded ImageNet-train subset, and measure top-1/top-5
on ImageNet val (or a seeded subset of it), batched, on cpu or cuda.

Results are memoised per (setup, arch, resolution) in a CSV appended as each
arch finishes: `<run_dir>/accuracy_memo.csv` by default, or a shared file
(`metric.accuracy.memo`). The setup fingerprint (checkpoint SHA-256, calibration
settings, val images) keeps results of different setups apart in a shared file.

Checkpoints: the official OFA supernets, by the names OFA's model zoo uses. They
are looked up in `metric.accuracy.checkpoint_dir` (if set, it must hold the file),
else the blockprof cache, else the asset mirror, else downloaded into the cache.
OFA publishes no checksums for them: the SHA-256 of the file used is printed and
recorded in every memo row's fingerprint instead of being verified.
"""
from __future__ import annotations

import logging

import csv
import functools
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from blockprof.common.assets import DOWNLOAD_TIMEOUT_S, MIRROR_ENV, default_cache_dir
from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write, sha256_file
from blockprof.metrics.imagenet import (
    EVAL_TRANSFORM, FastVal, FolderVal, calibration_images, check_imagenet, describe_difference, normalize, scan_split,
)
from blockprof.metrics.base import Metric
from blockprof.common.progress import progress
from blockprof.core.space import Arch, DesignSpace

log = logging.getLogger(__name__)

OFA_NETS_URL = "https://raw.githubusercontent.com/han-cai/files/master/ofa/ofa_nets/"
RESNET50_DRIVE_ID = "1xy6VIPEHXqbbqNu3xEZUxhp5FbTVs5cQ"  # OFA's model zoo fetches ofa_resnet50 from Google Drive
CALIB_VERSION = "ofa-calib-v1"  # calibration transform + estimator; bump when either changes


@dataclass(frozen=True)
class Checkpoint:
    """An official OFA supernet checkpoint: the supernet's name, its file name, where it is published."""
    supernet: str
    filename: str
    url: str
    drive_id: str | None = None

    @property
    def relpath(self) -> str:  # under the cache and the mirror, as the official URL lays it out
        return f"ofa/ofa_nets/{self.filename}"


CHECKPOINTS = {c.supernet: c for c in (
    Checkpoint("ofa_mbv3_d234_e346_k357_w1.2", "ofa_mbv3_d234_e346_k357_w1.2",
               OFA_NETS_URL + "ofa_mbv3_d234_e346_k357_w1.2"),
    Checkpoint("ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.0",
               OFA_NETS_URL + "ofa_mbv3_d234_e346_k357_w1.0"),
    Checkpoint("ofa_proxyless_d234_e346_k357_w1.3", "ofa_proxyless_d234_e346_k357_w1.3",
               OFA_NETS_URL + "ofa_proxyless_d234_e346_k357_w1.3"),
    Checkpoint("ofa_resnet50", "ofa_resnet50_d0-1-2_e0.2-0.25-0.35_w0.65-0.8-1.0",
               f"https://drive.google.com/uc?id={RESNET50_DRIVE_ID}", RESNET50_DRIVE_ID),
)}


# ------------------------------------------------------------------ checkpoint files
def _candidates(supernet: str) -> list[str]:
    ck = CHECKPOINTS.get(supernet)
    names = [ck.filename, supernet] if ck else [supernet]
    return list(dict.fromkeys(n + s for n in names for s in ("", ".pth", ".pt")))


def _download(ck: Checkpoint, dest: Path) -> None:
    """Fetch the official file into `dest` atomically (a temporary file renamed when complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        log.info(f"downloading {ck.supernet} from {ck.url} -> {dest}")
        if ck.drive_id:  # Google Drive's large-file confirmation page: gdown handles it
            import gdown
            if gdown.download(id=ck.drive_id, output=tmp, quiet=False) is None:
                raise OSError("gdown could not fetch the file")
        else:
            with open(tmp, "wb") as out, urllib.request.urlopen(ck.url, timeout=DOWNLOAD_TIMEOUT_S) as r:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    out.write(chunk)
        with open(tmp, "rb") as f:
            head = f.read(64).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html")):
            raise OSError("the server sent a web page, not a checkpoint")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_checkpoint(supernet: str, checkpoint_dir: str | None = None, cache_dir: str | None = None,
                       setting: str = "metric.accuracy.checkpoint_dir") -> Path:
    """Local path of the supernet's checkpoint: configured folder -> cache -> mirror -> download.
    `setting` is the config key that names the folder (errors point the user at it)."""
    ck = CHECKPOINTS.get(supernet)
    if checkpoint_dir:  # configured: it must hold the file, no silent fallback
        d = Path(checkpoint_dir).expanduser()
        for name in _candidates(supernet):
            if (d / name).is_file():
                return d / name
        raise UserError(f"{setting} {d} holds no checkpoint for {supernet} "
                        f"(looked for {', '.join(_candidates(supernet))})"
                        + (f"; official copy: {ck.url}" if ck else ""))
    if ck is None:
        raise UserError(f"OFA published no supernet checkpoint '{supernet}' (known: {', '.join(CHECKPOINTS)}); "
                        f"set {setting} to a folder holding your own")
    cached = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / ck.relpath
    if cached.is_file():
        return cached
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and (Path(mirror).expanduser() / ck.relpath).is_file():
        return Path(mirror).expanduser() / ck.relpath
    try:
        _download(ck, cached)
    except Exception as e:  # network down, HTTP error, unwritable cache, a web page instead of the file
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise UserError(f"supernet checkpoint {supernet} not found and download failed ({reason}); download "
                        f"{ck.url} and place it at {cached}, or set {setting} to a folder "
                        f"holding {ck.filename}") from None
    return cached


def save_ofa_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    """Write a supernet in OFA's checkpoint format (``{"state_dict": ...}``), atomically."""
    return atomic_write(path, lambda tmp: torch.save({"state_dict": net.state_dict()}, tmp))


def _unreadable(path: Path, e: BaseException) -> UserError:
    return UserError(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0][:160]}); delete it or fetch it again")


def load_supernet(space: DesignSpace, path: Path, allow_pickle: bool = False) -> torch.nn.Module:
    """The space's OFA supernet with the checkpoint's weights, in eval mode, on cpu.

    Loaded with ``weights_only=True``: OFA checkpoints are a dict holding ``state_dict``
    (plain tensors), which the restricted unpickler accepts. A file that needs arbitrary
    pickled objects is refused unless `allow_pickle` (only for files you trust)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # not a pickle the safe loader understands at all: corrupt, or not a checkpoint
            raise UserError(f"checkpoint {path} is unreadable (not a torch checkpoint, or a truncated one); "
                            "delete it or fetch it again") from None
        if not allow_pickle:
            raise UserError(f"checkpoint {path} holds a pickled {found.group(1)} beside its tensors, which the safe "
                            "loader (torch.load weights_only=True) refuses; if you trust the file set "
                            "metric.accuracy.allow_pickle=true") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001 - whatever a user's file does while unpickling
            raise _unreadable(path, e2) from None
    except Exception as e:  # noqa: BLE001 - missing, truncated, not a zip/pickle, ...
        raise _unreadable(path, e) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} is not an OFA supernet checkpoint (expected a dict of tensors "
                        "under 'state_dict')")
    net = space.new_supernet()
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shape_bad:
        bad = (missing or unexpected or shape_bad)[0]
        raise UserError(f"checkpoint {path} does not fit supernet {space.supernet} of space {space.name}: "
                        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shape_bad)} mis-shaped "
                        f"tensors (first: {bad})")
    net.load_state_dict(state)
    return net.eval()


# ------------------------------------------------------------------ BatchNorm re-calibration
def imagenet_train_dir(cfg) -> Path | None:
    """The ImageNet train split the config names (`data.train_dir`, else `data.imagenet`/train),
    or None: where BatchNorm statistics are re-calibrated from."""
    d = cfg.get("data") or {}
    if d.get("train_dir"):
        return Path(str(d.train_dir)).expanduser()
    return Path(str(d.imagenet)).expanduser() / "train" if d.get("imagenet") else None


@torch.no_grad()
def set_running_statistics(net: torch.nn.Module, images: torch.Tensor, batch_size: int,
                           device: str | torch.device) -> None:
    """Re-estimate every BatchNorm's running mean/var of `net` on uint8 `images` [N, 3, r, r].

    OFA's estimator (``elastic_nn/utils.set_running_statistics``): the calibration batches
    are forwarded with each BatchNorm normalising by its own batch statistics, and the
    running mean/var become the sample-weighted averages over batches of the per-batch
    mean and (biased) variance. Here a pre-hook puts each batch's statistics in the running
    buffers just before the (eval-mode) BatchNorm reads them, so nothing is normalised twice.
    Weights are untouched; `net` is left in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    sums: dict[torch.nn.Module, list] = {m: [0.0, 0.0, 0] for m in bns}

    def use_batch_stats(m, inputs):
        x = inputs[0]
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
        acc = sums[m]
        acc[0] = acc[0] + mean.double() * x.shape[0]
        acc[1] = acc[1] + var.double() * x.shape[0]
        acc[2] += x.shape[0]
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)

    net.eval()
    handles = [m.register_forward_pre_hook(use_batch_stats) for m in bns]
    try:
        for s in range(0, len(images), batch_size):
            net(normalize(images[s:s + batch_size], device))
    finally:
        for h in handles:
            h.remove()
    for m in bns:
        mean_sum, var_sum, n = sums[m]
        if n:
            m.running_mean.copy_(mean_sum / n)
            m.running_var.copy_(var_sum / n)


# ------------------------------------------------------------------ the metric
MEMO_NAME = "accuracy_memo.csv"
MEMO_COLUMNS = ("fingerprint", "space", "resolution", "arch", "top1", "top5", "n_val", "n_calib", "device", "seconds")
NET_CLASSES = 1000  # every OFA supernet's classifier
_LOADED: dict[tuple[str, str], torch.nn.Module] = {}  # (supernet, checkpoint sha256) -> loaded supernet


class SupernetAccuracy(Metric):
    """ImageNet top-1 (%) of each arch's subnet of the pretrained OFA supernet after BatchNorm
    re-calibration; top-5 is memoised beside it (`top5`, `results`)."""
    name, unit, higher_is_better = "accuracy", "%", True
    slow = True  # seconds per arch: tasks score it in small, resumable batches

    def __init__(self, space: DesignSpace, checkpoint: Path, train_dir: Path, val_dir: Path | None = None,
                 fast_dir: Path | None = None, calib_images: int = 2000, calib_batch_size: int = 200,
                 batch_size: int = 256, eval_subset: int | None = None, device: str = "auto", seed: int = 0,
                 workers: int = 4, memo: Path | None = None, archs_per_pass: int = 8,
                 allow_pickle: bool = False, threads: int | None = None, progress: bool = True):
        for key, v in (("calib_images", calib_images), ("calib_batch_size", calib_batch_size),
                       ("batch_size", batch_size), ("archs_per_pass", archs_per_pass)):
            if int(v) < 1:
                raise UserError(f"metric.accuracy.{key} must be >= 1, not {v}")
        if eval_subset is not None and int(eval_subset) < 1:
            raise UserError(f"metric.accuracy.eval_subset must be >= 1 or null, not {eval_subset}")
        if int(workers) < 0:
            raise UserError(f"data.workers must be >= 0, not {workers}")
        if threads is not None and int(threads) < 1:
            raise UserError(f"metric.accuracy.threads must be >= 1 or null, not {threads}")
        self.threads = None if threads is None else int(threads)
        if val_dir is None and fast_dir is None:
            raise UserError("supernet accuracy needs ImageNet val: set data.imagenet, data.val_dir or data.val_fast")
        self.space, self.device = space, _resolve_device(device)
        self.train_dir, self.val_dir = Path(train_dir), (Path(val_dir) if val_dir is not None else None)
        self.fast_dir = Path(fast_dir) if fast_dir is not None else None
        self.calib_images, self.calib_batch_size = int(calib_images), int(calib_batch_size)
        self.batch_size, self.archs_per_pass = int(batch_size), int(archs_per_pass)
        self.eval_subset = None if eval_subset is None else int(eval_subset)
        self.seed, self.workers, self.allow_pickle, self.progress = int(seed), int(workers), allow_pickle, progress
        self.classes = check_imagenet(self.train_dir, self.val_dir if self.fast_dir is None else None)
        if len(self.classes) > NET_CLASSES:
            raise UserError(f"ImageNet folder {self.train_dir} has {len(self.classes)} classes; the OFA supernets "
                            f"classify {NET_CLASSES}")
        self.checkpoint = Path(checkpoint)
        self.checkpoint_sha256 = sha256_file(self.checkpoint)
        self._results: dict[tuple[str, str, int], tuple[float, float]] = {}
        self._explicit_memo = memo is not None
        self.memo_path: Path | None = None
        if memo is not None:
            self.bind_memo(Path(memo))
        self._calib: dict[int, torch.Tensor] = {}
        self._fingerprints: dict[int, str] = {}
        self._val_sources: dict = {}
        log.info(f"supernet accuracy: {space.supernet} from {self.checkpoint} (sha256 "
              f"{self.checkpoint_sha256[:16]}, no published checksum to verify against), BN calibration on "
              f"{self.calib_images} train images, device {self.device}")
        if len(self.classes) != NET_CLASSES:
            log.warning(f"{self.train_dir} has {len(self.classes)} classes, not {NET_CLASSES}: labels are indices "
                        "into the sorted class folders and match the network's ImageNet classes only with all 1000")

    @classmethod
    def from_config(cls, cfg, space: DesignSpace) -> "SupernetAccuracy":
        a, d = cfg.metric.accuracy, cfg.get("data") or {}
        root = d.get("imagenet")
        root = Path(str(root)).expanduser() if root else None
        train = imagenet_train_dir(cfg)
        val = d.get("val_dir") or (root / "val" if root else None)
        fast = d.get("val_fast")
        if train is None:
            raise UserError("metric.accuracy.source=supernet needs ImageNet: set data.imagenet=/path/to/imagenet "
                            "(a folder with train/ and val/, one sub-folder per class)")
        if val is None and not fast:
            raise UserError("metric.accuracy.source=supernet needs ImageNet val: set data.imagenet, data.val_dir "
                            "or data.val_fast")
        train = Path(str(train)).expanduser()
        val = None if (fast or val is None) else Path(str(val)).expanduser()
        check_imagenet(train, val)  # cheap folder checks before a checkpoint is fetched
        ckpt = resolve_checkpoint(space.supernet, a.get("checkpoint_dir"))
        return cls(space, ckpt, train, val_dir=val, fast_dir=Path(str(fast)).expanduser() if fast else None,
                   calib_images=a.get("calib_images", 2000), calib_batch_size=a.get("calib_batch_size", 200),
                   batch_size=a.get("batch_size", 256), eval_subset=a.get("eval_subset"),
                   device=a.get("device", "auto"), seed=a.get("seed", cfg.seed), workers=d.get("workers", 4),
                   memo=a.get("memo"), archs_per_pass=a.get("archs_per_pass", 8),
                   allow_pickle=bool(a.get("allow_pickle", False)), threads=a.get("threads"))

    # ---- memo ---------------------------------------------------------------------
    def bind_run_dir(self, run_dir: Path) -> None:
        """Memoise into `<run_dir>/accuracy_memo.csv` (unless a shared memo is configured);
        results already there are reused, so a resumed run evaluates nothing twice."""
        if not self._explicit_memo:
            self.bind_memo(Path(run_dir) / MEMO_NAME)

    def bind_memo(self, path: Path) -> None:
        self.memo_path = Path(path)
        if self.memo_path.is_file():
            self._results.update(read_memo(self.memo_path))
            _drop_torn_tail(self.memo_path)  # else the next row appended would be glued onto it

    def _record(self, fp: str, arch: Arch, top1: float, top5: float, n_val: int, seconds: float) -> None:
        self._results[(fp, arch.text, arch.resolution)] = (top1, top5)
        if self.memo_path is None:
            return
        self.memo_path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        fd = os.open(self.memo_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                w.writerow(MEMO_COLUMNS)
            w.writerow([fp, self.space.name, arch.resolution, arch.text, repr(top1), repr(top5), n_val,
                        self.calib_images, self.device, f"{seconds:.3f}"])
            os.write(fd, buf.getvalue().encode())  # one append per row: whole lines, even when shared
        finally:
            os.close(fd)

    # ---- lazily loaded pieces ---------------------------------------------------
    @property
    def supernet(self) -> torch.nn.Module:
        """The loaded supernet: once per process and checkpoint (profile and search reuse it)."""
        key = (self.space.supernet, self.checkpoint_sha256)
        if key not in _LOADED:
            _LOADED[key] = load_supernet(self.space, self.checkpoint, self.allow_pickle)
        return _LOADED[key]

    @functools.cached_property
    def _train(self):
        return scan_split(self.train_dir, "train", self.classes)

    @functools.cached_property
    def _val_split(self):
        return scan_split(self.val_dir, "val", self.classes)

    def val_source(self, resolution: int):
        """Val images at `resolution`: the preprocessed file (data.val_fast) or the folder."""
        if resolution not in self._val_sources:
            self._val_sources[resolution] = self._open_val(resolution)
        return self._val_sources[resolution]

    def _open_val(self, resolution: int):
        if self.fast_dir is not None:
            src = FastVal(self.fast_dir, resolution)
            if list(src.classes) != list(self.classes):
                raise UserError(f"ImageNet class sets differ between {self.train_dir} and the preprocessed val "
                                f"of {self.fast_dir}: " + describe_difference(self.classes, src.classes, "train", "val"))
        else:
            src = FolderVal(self._val_split, resolution, self.workers)
        if self.eval_subset is not None and self.eval_subset > len(src.labels):
            raise UserError(f"metric.accuracy.eval_subset={self.eval_subset} but ImageNet val has only "
                            f"{len(src.labels)} images")
        return src

    def eval_indices(self, n_val: int) -> np.ndarray:
        """The val images scored: all, or a seeded subset (sorted, so batches read in file order)."""
        if self.eval_subset is None:
            return np.arange(n_val)
        rng = np.random.default_rng([self.seed, 0xE7A1])
        return np.sort(rng.choice(n_val, size=self.eval_subset, replace=False))

    def fingerprint(self, resolution: int) -> str:
        """Everything an accuracy depends on besides the arch: checkpoint, calibration, val images."""
        if resolution not in self._fingerprints:
            spec = {"supernet": self.space.supernet, "checkpoint_sha256": self.checkpoint_sha256,
                    "calib": [CALIB_VERSION, str(self.train_dir.resolve()), self.calib_images,
                              self.calib_batch_size, self.seed],
                    "val": [EVAL_TRANSFORM, self.val_source(resolution).identity, self.eval_subset,
                            self.seed if self.eval_subset is not None else None]}
            self._fingerprints[resolution] = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]
        return self._fingerprints[resolution]

    def calibration_set(self, resolution: int) -> torch.Tensor:
        """The seeded calibration set at one resolution (uint8, built once, shared by every arch)."""
        if resolution not in self._calib:
            self._calib[resolution] = calibration_images(self._train, resolution, self.calib_images, self.seed,
                                                         self.workers, self.progress)
        return self._calib[resolution]

    # ---- evaluation ---------------------------------------------------------------
    def results(self, archs: Sequence[Arch]) -> np.ndarray:
        """[n, 2] top-1 and top-5 (%) per arch; each new (arch, resolution) is evaluated once."""
        keys, todo, queued = [], {}, set()
        for a in archs:
            self.space.check_resolution(a.resolution)
            k = (self.fingerprint(a.resolution), a.text, a.resolution)
            keys.append(k)
            if k not in self._results and k not in queued:
                queued.add(k)
                todo.setdefault(a.resolution, []).append(a)
        if todo:
            prev = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                self._compute(todo)
            finally:
                torch.set_num_threads(prev)
        return np.array([self._results[k] for k in keys], dtype=np.float64).reshape(len(keys), 2)

    def evaluate(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.results(archs)[:, 0]

    def top5(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.results(archs)[:, 1]

    def _compute(self, todo: dict[int, list[Arch]]) -> None:
        passes = [(r, archs[s:s + self.archs_per_pass]) for r, archs in sorted(todo.items())
                  for s in range(0, len(archs), self.archs_per_pass)]
        for r, chunk in progress(passes, desc="supernet accuracy", enabled=self.progress):
            calib, val, fp = self.calibration_set(r), self.val_source(r), self.fingerprint(r)
            idx = self.eval_indices(len(val.labels))
            t0 = time.perf_counter()
            nets = []
            for a in chunk:
                net = self.space.build_subnet(a, supernet=self.supernet).to(self.device)
                set_running_statistics(net, calib, self.calib_batch_size, self.device)
                nets.append(net)
            hits1, hits5 = self._count_hits(nets, val, idx)
            secs = (time.perf_counter() - t0) / len(chunk)
            for a, h1, h5 in zip(chunk, hits1, hits5):
                self._record(fp, a, 100.0 * h1 / len(idx), 100.0 * h5 / len(idx), len(idx), secs)
            del nets

    @torch.inference_mode()
    def _count_hits(self, nets, val, idx) -> tuple[list[int], list[int]]:
        """Top-1 and top-5 hit counts of each net over the val images `idx`, each batch decoded once."""
        h1 = torch.zeros(len(nets), dtype=torch.int64, device=self.device)
        h5 = torch.zeros_like(h1)
        for xb, yb in val.batches(idx, self.batch_size, pin=self.device == "cuda"):
            x = normalize(xb, self.device)
            y = yb.to(self.device, non_blocking=True)[:, None]
            for i, net in enumerate(nets):
                hit = net(x).topk(5, dim=1).indices == y
                h1[i] += hit[:, 0].sum()
                h5[i] += hit.any(dim=1).sum()
        return h1.tolist(), h5.tolist()


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"metric.accuracy.device must be auto, cpu or cuda, not '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("metric.accuracy.device=cuda but torch sees no CUDA GPU on this machine (use cpu or auto)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def read_memo(path: Path) -> dict[tuple[str, str, int], tuple[float, float]]:
    """Rows of an accuracy memo; a torn last line (a run killed mid-write) is ignored."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text accuracy memo (binary or damaged); delete it, its "
                        "accuracies are computed again") from None
    if not lines:
        return out
    header = next(csv.reader([lines[0]]))
    if tuple(header[:len(MEMO_COLUMNS)]) != MEMO_COLUMNS:
        raise UserError(f"{path}:1: not an accuracy memo (expected columns {','.join(MEMO_COLUMNS)})")
    for i, row in enumerate(csv.reader(lines[1:]), start=2):
        try:
            rec = dict(zip(MEMO_COLUMNS, row, strict=True))
            out[(rec["fingerprint"], rec["arch"], int(rec["resolution"]))] = (float(rec["top1"]), float(rec["top5"]))
        except ValueError:
            if i == len(lines):
                continue
            raise UserError(f"{path}:{i}: malformed accuracy memo row; delete the line or the file") from None
    return out


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line a killed run left without its newline (read_memo ignores it)."""
    with open(path, "r+b") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
