"""ImageNet-style image folders for supernet evaluation.

Layout: ``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG`` (the
layout torchvision's ImageFolder reads; labels are the sorted class index, as
OFA trained with). Images leave this module as uint8 NCHW tensors; `normalize`
turns a batch into the network input on the target device, so the folder
loader and the preprocessed file (the fast loader) feed bit-identical inputs.

Transforms follow OFA:
* evaluation: Resize(ceil(r / 0.875)) -> CenterCrop(r) (``build_valid_transform``);
* BatchNorm calibration: RandomResizedCrop(r) -> horizontal flip -> ColorJitter
  (brightness 32/255, saturation 0.5), as OFA's ``tutorial/imagenet_eval_helper.calib_bn``.
  Each calibration image draws its augmentation from its own seed, so the set is
  the same for a given seed whatever the worker count.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from blockprof.common.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FAST_FORMAT = "blockprof-imagenet-val"
FAST_VERSION = 1
EVAL_TRANSFORM = "Resize(ceil(r/0.875)) CenterCrop(r) uint8 RGB NCHW"


# ------------------------------------------------------------------ transforms
def eval_transform(resolution: int):
    """OFA's validation transform, stopping at uint8 (normalisation is `normalize`)."""
    from torchvision import transforms as T
    return T.Compose([T.Resize(int(math.ceil(resolution / 0.875))), T.CenterCrop(resolution), T.PILToTensor()])


def calib_transform(resolution: int):
    """OFA's BN-calibration (train) transform, stopping at uint8."""
    from torchvision import transforms as T
    return T.Compose([T.RandomResizedCrop(resolution), T.RandomHorizontalFlip(),
                      T.ColorJitter(brightness=32.0 / 255.0, saturation=0.5), T.PILToTensor()])


def normalize(batch: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 NCHW batch -> float network input on `device` (ToTensor + Normalize)."""
    x = batch.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


# ------------------------------------------------------------------ folders
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def list_classes(split_dir: Path, split: str) -> list[str]:
    """Sorted class sub-folders of one split; one-line errors for a missing or classless split."""
    split_dir = Path(split_dir)
    if not split_dir.exists():
        raise UserError(f"ImageNet {split} folder {split_dir} does not exist")
    if not split_dir.is_dir():
        raise UserError(f"ImageNet {split} path {split_dir} is not a folder")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"ImageNet {split} folder {split_dir} has no class sub-folders "
                        f"(expected {split_dir}/<class>/<image>.JPEG)")
    return classes


def _has_image(split_dir: Path, classes: Sequence[str]) -> bool:
    for c in classes:
        with os.scandir(split_dir / c) as it:
            if any(e.is_file() and _is_image(e.name) for e in it):
                return True
    return False


def describe_difference(a: Sequence[str], b: Sequence[str], name_a: str, name_b: str) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    parts = [f"{len(only_a)} only in {name_a} (e.g. {only_a[0]})" if only_a else "",
             f"{len(only_b)} only in {name_b} (e.g. {only_b[0]})" if only_b else ""]
    return ", ".join(p for p in parts if p)


def check_imagenet(train_dir: Path, val_dir: Path | None) -> list[str]:
    """Cheap start-up checks of both splits; returns the class list. `val_dir=None`: train only
    (evaluation then reads the preprocessed file, checked against these classes)."""
    classes = list_classes(train_dir, "train")
    if val_dir is not None:
        val_classes = list_classes(val_dir, "val")
        if val_classes != classes:
            raise UserError(f"ImageNet class sets differ between {train_dir} and {val_dir}: "
                            + describe_difference(classes, val_classes, "train", "val"))
    for split, d in (("train", train_dir), ("val", val_dir)):
        if d is not None and not _has_image(Path(d), classes):
            raise UserError(f"ImageNet {split} split {d} is empty: no images ({', '.join(IMG_EXTENSIONS)}) "
                            "in any class folder")
    return classes


@dataclass(frozen=True)
class Split:
    """One scanned split: image paths relative to `root` (``class/file``) and their labels."""
    root: Path
    classes: tuple[str, ...]
    relpaths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.relpaths)

    @property
    def identity(self) -> str:
        return samples_identity(self.relpaths, self.labels)


def samples_identity(relpaths: Sequence[str], labels: Sequence[int]) -> str:
    """Short hash of the ordered (image, label) list: same for a folder and its preprocessed file."""
    h = hashlib.sha256()
    for p, y in zip(relpaths, labels):
        h.update(f"{p}\t{int(y)}\n".encode())
    return h.hexdigest()[:16]


def scan_split(split_dir: Path, split: str, classes: Sequence[str] | None = None) -> Split:
    """All images of a split, sorted by class then file name (ImageFolder's order)."""
    split_dir = Path(split_dir)
    classes = list(classes) if classes is not None else list_classes(split_dir, split)
    rel, labels = [], []
    for y, c in enumerate(classes):
        cdir = split_dir / c
        if not cdir.is_dir():
            raise UserError(f"ImageNet {split} folder {split_dir} lacks class folder {c}")
        for root, dirs, files in os.walk(cdir, followlinks=True):
            dirs.sort()
            sub = Path(root).relative_to(split_dir).as_posix()
            for f in sorted(files):
                if _is_image(f):
                    rel.append(f"{sub}/{f}")
                    labels.append(y)
    if not rel:
        raise UserError(f"ImageNet {split} split {split_dir} is empty: no images in any class folder")
    return Split(split_dir, tuple(classes), tuple(rel), np.asarray(labels, dtype=np.int64))


class ImageList(torch.utils.data.Dataset):
    """Images of a split (or of chosen indices of it) through a transform; optionally one
    seed per item, so random augmentations do not depend on order or worker count."""

    def __init__(self, split: Split, transform, indices: np.ndarray | None = None, seeds: np.ndarray | None = None):
        self.split, self.transform = split, transform
        self.indices = np.arange(len(split)) if indices is None else np.asarray(indices)
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError
        j = int(self.indices[i])
        path = self.split.root / self.split.relpaths[j]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read image {path}: {e}") from None
        if self.seeds is None:
            x = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.seeds[i]))
                x = self.transform(img)
        return x, int(self.split.labels[j])


def _loader(ds, batch_size: int, workers: int, pin: bool):
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=pin, persistent_workers=False)


def iterate(loader) -> Iterator:
    """Batches of a DataLoader; an unreadable image ends in one line even from a worker process."""
    try:
        yield from loader
    except UserError as e:  # re-raised from a worker: the message holds the worker's traceback
        last = str(e).strip().splitlines()[-1]
        raise UserError(last.split("UserError: ", 1)[-1]) from None


def calibration_images(split: Split, resolution: int, n: int, seed: int, workers: int = 0,
                       progress: bool = False) -> torch.Tensor:
    """A seeded random subset of `n` train images through the calibration transform, uint8 [n, 3, r, r].
    Same seed -> same images and same augmentations."""
    if n > len(split):
        raise UserError(f"metric.accuracy.calib_images={n} but ImageNet train {split.root} has only "
                        f"{len(split)} images")
    rng = np.random.default_rng([seed, 0xCA11B])
    idx = np.sort(rng.choice(len(split), size=n, replace=False))
    seeds = rng.integers(0, 2**63 - 1, size=n)
    out = torch.empty((n, 3, resolution, resolution), dtype=torch.uint8)
    ds = ImageList(split, calib_transform(resolution), idx, seeds)
    from blockprof.common.progress import progress as bar
    pos = 0
    for x, _ in bar(iterate(_loader(ds, 64, workers, False)), desc=f"calibration images @{resolution}",
                    total=math.ceil(n / 64), enabled=progress):
        out[pos:pos + len(x)] = x
        pos += len(x)
    return out


# ------------------------------------------------------------------ val sources
class ValSource:
    """Validation images at one resolution: labels, identity, and uint8 batches of chosen indices."""
    resolution: int
    classes: tuple[str, ...]
    labels: np.ndarray
    identity: str
    description: str

    def batches(self, indices: np.ndarray, batch_size: int, pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


class FolderVal(ValSource):
    """Decodes and transforms the val folder on the fly (DataLoader workers)."""

    def __init__(self, split: Split, resolution: int, workers: int = 0):
        self.split, self.resolution, self.workers = split, int(resolution), int(workers)
        self.classes, self.labels, self.identity = split.classes, split.labels, split.identity
        self.description = f"folder {split.root}"

    def batches(self, indices, batch_size, pin=False):
        ds = ImageList(self.split, eval_transform(self.resolution), indices)
        yield from iterate(_loader(ds, batch_size, self.workers, pin))


def fast_paths(fast_dir: Path, resolution: int) -> tuple[Path, Path]:
    """The preprocessed val file of one resolution and its metadata sidecar."""
    fast_dir = Path(fast_dir)
    return fast_dir / f"val_{resolution}.npy", fast_dir / f"val_{resolution}.json"


class FastVal(ValSource):
    """The val split preprocessed at one resolution into one uint8 .npy file, memory-mapped:
    only the pages a batch touches are read, so the file may exceed RAM."""

    def __init__(self, fast_dir: Path, resolution: int):
        npy, meta_path = fast_paths(fast_dir, resolution)
        hint = (f"make it with: python scripts/preprocess_imagenet_val.py --val <imagenet>/val "
                f"--resolution {resolution} --out {Path(fast_dir)}")
        if not npy.is_file() or not meta_path.is_file():
            raise UserError(f"preprocessed val file {npy} (with {meta_path.name}) not found; {hint}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"preprocessed val metadata {meta_path} is unreadable ({e}); {hint}") from None
        if meta.get("format") != FAST_FORMAT or meta.get("version") != FAST_VERSION \
                or meta.get("transform") != EVAL_TRANSFORM or meta.get("resolution") != resolution:
            raise UserError(f"{meta_path} is not a version-{FAST_VERSION} blockprof val file at resolution "
                            f"{resolution}; {hint}")
        try:
            self.images = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(f"preprocessed val file {npy} is unreadable ({e}); {hint}") from None
        n = len(meta["labels"])
        if self.images.dtype != np.uint8 or self.images.shape != (n, 3, resolution, resolution):
            raise UserError(f"preprocessed val file {npy} has shape {self.images.shape} {self.images.dtype}, "
                            f"its metadata says ({n}, 3, {resolution}, {resolution}) uint8; {hint}")
        self.resolution = int(resolution)
        self.classes = tuple(meta["classes"])
        self.labels = np.asarray(meta["labels"], dtype=np.int64)
        self.identity = samples_identity(meta["relpaths"], self.labels)
        self.description = f"preprocessed {npy}"

    def batches(self, indices, batch_size, pin=False):
        indices = np.asarray(indices)
        for s in range(0, len(indices), batch_size):
            idx = indices[s:s + batch_size]
            if len(idx) and idx[-1] - idx[0] == len(idx) - 1:  # contiguous run: a plain slice
                arr = np.array(self.images[idx[0]:idx[-1] + 1])
            else:
                arr = self.images[idx]
            x = torch.from_numpy(arr)
            yield (x.pin_memory() if pin else x), torch.from_numpy(self.labels[idx])


# ------------------------------------------------------------------ the fast loader's writer
def preprocess_val(val_dir: Path, resolution: int, out_dir: Path, workers: int = 4, batch_size: int = 256,
                   progress: bool = True) -> Path:
    """Write val at `resolution` as one uint8 [N, 3, r, r] .npy (written through a memory map,
    never held in RAM) plus a JSON sidecar (classes, labels, image paths). Atomic: the files
    appear under their final names only when complete."""
    val_dir, out_dir = Path(val_dir), Path(out_dir)
    split = scan_split(val_dir, "val")
    out_dir.mkdir(parents=True, exist_ok=True)
    npy, meta_path = fast_paths(out_dir, resolution)
    part = npy.with_name(npy.name + ".part")
    n = len(split)
    arr = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(n, 3, resolution, resolution))
    try:
        from blockprof.common.progress import progress as bar
        ds = ImageList(split, eval_transform(resolution))
        pos = 0
        for x, _ in bar(iterate(_loader(ds, batch_size, workers, False)), desc=f"val @{resolution}",
                        total=math.ceil(n / batch_size), enabled=progress):
            arr[pos:pos + len(x)] = x.numpy()
            pos += len(x)
        arr.flush()
        del arr
        meta = {"format": FAST_FORMAT, "version": FAST_VERSION, "resolution": int(resolution),
                "transform": EVAL_TRANSFORM, "source": str(val_dir.resolve()), "classes": list(split.classes),
                "labels": split.labels.tolist(), "relpaths": list(split.relpaths)}
        meta_part = meta_path.with_name(meta_path.name + ".part")
        meta_part.write_text(json.dumps(meta))
        os.replace(part, npy)
        os.replace(meta_part, meta_path)
    finally:
        for p in (part, meta_path.with_name(meta_path.name + ".part")):
            if p.exists():
                p.unlink()
    return npy


# ------------------------------------------------------------------ synthetic data (tests, smoke checks)
def write_synthetic_imagefolder(root: Path, n_classes: int = 3, n_train: int = 6, n_val: int = 4,
                                size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A tiny ImageNet-style folder of JPEGs (class-tinted noise), for tests and smoke checks.
    Not ImageNet: accuracies on it mean nothing about real models."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(n_classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            tint = rng.integers(0, 256, size=3)
            for i in range(n):
                noise = rng.integers(0, 256, size=(size[0], size[1], 3))
                img = ((noise + 2 * tint) // 3).astype(np.uint8)
                Image.fromarray(img).save(d / f"{split}_{c}_{i}.JPEG", quality=90)
    return root
