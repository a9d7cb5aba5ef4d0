"""task=export: archs as model files, for timing on a device blockprof cannot reach or for deploying.

    python run.py task=export space=mbv3 task.num_archs=200 task.target=myphone
    python run.py task=export space=mbv3 task.archs_csv=outputs/runs/search/<run>/front.csv \
        task.weights=supernet data.imagenet=/data/imagenet

Writes, for sampled archs (seeded) or the archs of a list (`task.archs_csv`: a seed CSV,
archs.csv, a search's front/scored/best.csv, a profile's samples.csv), one ONNX file
per (arch, resolution) - input `input` float32 [1, 3, r, r], output `logits`, shapes
static - plus

- `manifest.csv`: the seed's latency CSV, exactly its six columns, the device column
  holding `task.target`, the latency column empty (the seed's own reader takes it);
- `files.csv`: the sidecar that ties each net_id to its files (`onnx_file`, and
  `pytorch_file` / `tflite_file` when written), paths relative to the folder.

`task.weights` picks the weights:

- `random` (default): the supernet's random initial weights - enough for latency, and
  needs no checkpoint;
- `supernet`: each subnet cut from the pretrained OFA supernet with its weights
  (OFA's `set_active_subnet(**net_config)` then `get_active_subnet(preserve_weight=True)`),
  its BatchNorm statistics re-calibrated on ImageNet train when `data.imagenet` (or
  `data.train_dir`) is set, and saved as a PyTorch checkpoint too (`pytorch/<stem>.pt`,
  see `load_subnet`): a subnet to fine-tune or deploy.

Time each ONNX file with the device's own tool, fill in the latency column (in `lat
unit`) and train a predictor on it:

    python run.py task=train_predictor space=mbv3 device=<name> task.csv=<filled manifest>

(docs/export.md has the whole walk-through; scripts/time_onnx_manifest.py fills a
manifest with ONNX Runtime on this machine.) `task.formats=[onnx,tflite]` adds a
TFLite file per arch when litert-torch is installed.

Every file is written atomically and skipped when already there, so a killed export
resumes: rerun with `task.out_dir=<the first run's folder>`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from blockprof.app.task import Task
from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write, atomic_write_text, sha256_file
from blockprof.common.progress import progress
from blockprof.core.archlist import read_arch_list
from blockprof.core.latency_csv import UNIT_TO_MS, seed_field, seed_row, write_seed_csv
from blockprof.core.space import Arch, DesignSpace
from blockprof.infra.tracking import resolve_path
from blockprof.metrics.engines import ONNX_INPUT, ONNX_OUTPUT, export_onnx

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pytorch", "tflite")
EXTENSIONS = {"onnx": "onnx", "pytorch": "pt", "tflite": "tflite"}
FILE_COLUMNS = {"onnx": "onnx_file", "pytorch": "pytorch_file", "tflite": "tflite_file"}
WEIGHTS = ("random", "supernet")
INPUT_NAME, OUTPUT_NAME = ONNX_INPUT, ONNX_OUTPUT
MANIFEST, FILES, META, LOCK = "manifest.csv", "files.csv", "export.json", ".export.lock"
SUBNET_FORMAT = "blockprof.subnet/1"


def archs_to_export(ctx) -> tuple[list[Arch], str]:
    """The archs (duplicates dropped, first kept) and where they came from."""
    t = ctx.cfg.task
    if t.archs_csv:
        lst = read_arch_list(resolve_path(t.archs_csv, ctx.cfg), ctx.space)
        archs, source = lst.archs, f"{lst.path} ({lst.format})"
    else:
        if int(t.num_archs) < 1:
            raise UserError(f"task.num_archs must be >= 1, not {t.num_archs}")
        archs = ctx.space.sample(np.random.default_rng([int(ctx.cfg.seed), 5]), int(t.num_archs))
        source = f"{t.num_archs} archs sampled with seed {ctx.cfg.seed}"
    return list(dict.fromkeys(archs)), source


def file_stem(space: DesignSpace, net_id: int, arch: Arch) -> str:
    """`<net_id>_<r>px_<digest>`: the digest ties a file to its arch, so a resumed export
    never takes a file made for another arch under the same net_id."""
    digest = hashlib.sha1(f"{space.name}|{space.width_mult}|{arch.text}|{arch.resolution}".encode()).hexdigest()
    return f"{net_id:05d}_{arch.resolution}px_{digest[:10]}"


def export_tflite(net, resolution: int, path: Path) -> Path:
    import torch
    import litert_torch  # optional: checked in validate()
    x = torch.randn(1, 3, resolution, resolution)
    model = litert_torch.convert(net, (x,))
    return atomic_write(path, lambda tmp: model.export(str(tmp)))


# ------------------------------------------------------------------ PyTorch checkpoints
def save_subnet(net, space: DesignSpace, arch: Arch, path: Path, weights: dict) -> Path:
    """The subnet as a plain dict a user loads with `torch.load(path, weights_only=True)`:

    - `subnet_config`: OFA's own description of the subnet (`net.config`), which
      `ofa.imagenet_classification.networks.get_net_by_name(cfg["name"]).build_from_config(cfg)`
      turns back into the module, without blockprof;
    - `state_dict`: its weights (BatchNorm statistics included);
    - `net_config`: OFA's arch dict (`ks`/`e`/`d` or `d`/`e`/`w`, and `r`) as `space.to_ofa`
      gives it and `space.from_ofa` reads it; `arch`, `resolution`, `space`, `width_mult`,
      `supernet` and `weights` (where the weights came from) say what it is.
    """
    import torch
    obj = {"format": SUBNET_FORMAT, "space": space.name, "width_mult": space.width_mult,
           "supernet": space.supernet, "arch": arch.text, "resolution": int(arch.resolution),
           "net_config": space.to_ofa(arch), "subnet_config": net.config,
           "weights": weights, "state_dict": net.state_dict()}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_subnet(path: str | Path):
    """(module in eval mode, checkpoint dict) of a subnet `task=export` saved; rebuilt from
    OFA's own config, so it needs only torch and ofa (no blockprof) - this is the recipe."""
    import torch
    from ofa.imagenet_classification.networks import get_net_by_name
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != SUBNET_FORMAT:
        raise UserError(f"{path} is not a subnet checkpoint written by task=export")
    net = get_net_by_name(ck["subnet_config"]["name"]).build_from_config(ck["subnet_config"])
    net.load_state_dict(ck["state_dict"])
    return net.eval(), ck


# ------------------------------------------------------------------ weights
def weights_fingerprint(info: dict) -> str:
    """Same fingerprint <=> same weights: a resumed export must not mix two kinds of files."""
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


class SubnetSource:
    """Where each exported subnet comes from: the random supernet, or the pretrained one
    (loaded once), with BatchNorm re-calibrated on ImageNet train when it is configured.
    Built in `validate`, so a missing checkpoint or dataset stops the run before it opens."""

    def __init__(self, ctx):
        t, self.space = ctx.cfg.task, ctx.space
        self.kind = str(t.weights)
        if self.kind not in WEIGHTS:
            raise UserError(f"task.weights must be one of {list(WEIGHTS)}, not '{self.kind}'")
        self.info: dict = {"source": self.kind}
        self.checkpoint = self.train_dir = None
        self._supernet = self._split = None
        self._calib: dict = {}
        if self.kind == "random":
            return
        from blockprof.metrics.imagenet import check_imagenet
        from blockprof.metrics.supernet_accuracy import imagenet_train_dir, resolve_checkpoint
        if self.space.capabilities.supernet_checkpoint is None and not t.get("checkpoint_dir"):
            raise UserError(f"task.weights=supernet: OFA published no trained supernet for space {self.space.name} "
                            f"({self.space.supernet}); set task.checkpoint_dir to a folder holding your own")
        self.checkpoint = resolve_checkpoint(self.space.supernet, t.get("checkpoint_dir"), setting="task.checkpoint_dir")
        self.info.update(supernet=self.space.supernet, checkpoint_sha256=sha256_file(self.checkpoint))
        self.train_dir = imagenet_train_dir(ctx.cfg)
        self.calib_images, self.calib_batch = int(t.calib_images), int(t.calib_batch_size)
        self.seed, self.workers = int(ctx.cfg.seed), int((ctx.cfg.get("data") or {}).get("workers", 0))
        if self.train_dir is None:
            log.warning("task.weights=supernet without ImageNet (data.imagenet): BatchNorm statistics are the "
                        "supernet's, not re-calibrated for each subnet; OFA's accuracies assume re-calibration")
            self.info["bn"] = "supernet"
            return
        for key, v in (("calib_images", self.calib_images), ("calib_batch_size", self.calib_batch)):
            if v < 1:
                raise UserError(f"task.{key} must be >= 1, not {v}")
        self.classes = check_imagenet(self.train_dir, None)  # cheap folder checks, before any run opens
        self.info["bn"] = {"recalibrated_on": str(self.train_dir.resolve()), "images": self.calib_images,
                           "batch_size": self.calib_batch, "seed": self.seed}

    @property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.info)

    def subnet(self, arch: Arch):
        if self.kind == "random":
            return self.space.build_subnet(arch)
        from blockprof.metrics.supernet_accuracy import load_supernet, set_running_statistics
        if self._supernet is None:
            self._supernet = load_supernet(self.space, self.checkpoint)
        net = self.space.build_subnet(arch, supernet=self._supernet)  # a copy: the supernet stays as loaded
        if self.train_dir is not None:
            set_running_statistics(net, self._calibration_set(arch.resolution), self.calib_batch, "cpu")
        return net.eval()

    def _calibration_set(self, resolution: int):
        """The seeded calibration images at one resolution, the same the supernet-accuracy
        metric uses for the same seed and count (built once per resolution)."""
        from blockprof.metrics.imagenet import calibration_images, scan_split
        if self._split is None:
            self._split = scan_split(self.train_dir, "train", self.classes)
            if self.calib_images > len(self._split):
                raise UserError(f"task.calib_images={self.calib_images} but ImageNet train {self.train_dir} has "
                                f"only {len(self._split)} images")
        if resolution not in self._calib:
            self._calib[resolution] = calibration_images(self._split, resolution, self.calib_images, self.seed,
                                                         self.workers)
        return self._calib[resolution]


# ------------------------------------------------------------------ options and files
def _check_formats(formats, weights: str) -> list[str]:
    fmts = [str(f) for f in formats]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UserError(f"task.formats {fmts}: choose one or more of {list(FORMATS)}")
    if "tflite" in fmts:
        try:
            import litert_torch  # noqa: F401
        except ImportError:
            raise UserError("task.formats has tflite, which needs litert-torch (pip install litert-torch; "
                            "see docs/export.md)") from None
    if weights == "supernet" and "pytorch" not in fmts:  # a deployable subnet is a checkpoint first
        fmts.append("pytorch")
    return list(dict.fromkeys(fmts))


def _target(t) -> str:
    target = str(t.target).strip()
    if not target:
        raise UserError("task.target must name the device the files are for (it goes into the manifest)")
    if "/" in target or "\\" in target:  # it names the run folder too
        raise UserError(f"task.target {target!r}: a device name, not a path (no '/' or '\\')")
    return seed_field(target, "task.target")


def _out_dir(ctx) -> Path:
    t = ctx.cfg.task
    return resolve_path(t.out_dir, ctx.cfg) if t.get("out_dir") else Path(ctx.run_dir)


def _settings(ctx, formats, source: SubnetSource) -> dict:
    s = ctx.space
    return {"format": "blockprof.export", "space": s.name, "width_mult": s.width_mult,
            "resolutions": list(s.resolutions), "opset": int(ctx.cfg.task.opset), "formats": formats,
            "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "batch": 1},
            "output": OUTPUT_NAME, "weights": source.info, "weights_fingerprint": source.fingerprint}


def _check_out_dir(out: Path) -> None:
    """task.out_dir is, or can become, a folder we can write to: tried for real, with a
    temporary folder in its nearest existing ancestor (permissions alone do not tell, e.g.
    as root, or on a read-only file system)."""
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == out else f"lies inside {probe}, which is a file"
        raise UserError(f"task.out_dir {out} {where}, not a folder; pick another task.out_dir")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".blockprof-probe-", dir=probe))
    except OSError as exc:
        raise UserError(f"task.out_dir {out} is not writable ({probe}: {exc.strerror or exc}); "
                        "pick another task.out_dir") from None


def _lock_out_dir(out: Path) -> int:
    """An exclusive lock on `<out_dir>/.export.lock` (flock: released when this process
    ends, however it ends), so two exports cannot write one folder at once."""
    import fcntl
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"task.out_dir {out} is in use by another export; wait for it to finish "
                        "(a rerun then resumes it) or pick another task.out_dir") from None
    return fd


def _check_resume(out: Path, settings: dict) -> None:
    meta = out / META
    if not meta.is_file():
        return
    old = json.loads(meta.read_text())
    for k in ("space", "width_mult", "opset"):
        if old.get(k) != settings[k]:
            raise UserError(f"{out} holds an export with {k}={old.get(k)!r}, not {settings[k]!r}; "
                            "use another task.out_dir")
    # an export from before weights were recorded holds random weights
    if old.get("weights_fingerprint", weights_fingerprint({"source": "random"})) != settings["weights_fingerprint"]:
        raise UserError(f"{out} holds an export with other weights ({old.get('weights')}), not "
                        f"{settings['weights']}; use another task.out_dir")


def write_manifest(path: Path, rows: list[tuple[int, Arch, dict]], device: str, unit: str) -> Path:
    """The seed's six columns and header, latency empty: what the device's timings fill in."""
    return write_seed_csv(path, [seed_row(net_id, arch, device, unit, "") for net_id, arch, _ in rows])


def write_files(path: Path, rows: list[tuple[int, Arch, dict]]) -> Path:
    """The sidecar: net_id -> each file written for it (paths relative to the export folder)."""
    cols = [FILE_COLUMNS[f] for f in FORMATS if any(FILE_COLUMNS[f] in files for _, _, files in rows)]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["net_id", "resolution"] + cols)
            for net_id, arch, files in rows:
                w.writerow([net_id, arch.resolution] + [files.get(c, "") for c in cols])
    return atomic_write(path, write)


class ExportTask(Task):
    """ONNX (optionally PyTorch / TFLite) files per arch, a seed-format manifest to fill, a
    sidecar of file paths."""
    groups = ("space",)

    def validate(self, ctx) -> None:
        t = self.cfg
        if int(t.opset) < 7:
            raise UserError(f"task.opset must be >= 7, not {t.opset}")
        if str(t.unit) not in UNIT_TO_MS:
            raise UserError(f"task.unit must be one of {list(UNIT_TO_MS)}, not '{t.unit}'")
        _target(t)
        self._source = SubnetSource(ctx)
        formats = _check_formats(t.formats, self._source.kind)
        archs_to_export(ctx)
        out = _out_dir(ctx)
        if t.get("out_dir"):
            _check_out_dir(out)
        _check_resume(out, _settings(ctx, formats, self._source))
        if t.get("out_dir"):
            # last: held from here to the end of the run. (Without task.out_dir the run
            # folder is the out_dir, and the run folder has its own lock.)
            self._lock = _lock_out_dir(out)

    def run(self, ctx, tracker):
        try:
            return self._run(ctx, tracker)
        finally:
            lock = getattr(self, "_lock", None)
            if lock is not None:
                os.close(lock)  # closing the descriptor releases the lock
                self._lock = None

    def _run(self, ctx, tracker):
        import torch
        t, space = self.cfg, ctx.space
        source = getattr(self, "_source", None) or SubnetSource(ctx)
        formats = _check_formats(t.formats, source.kind)
        archs, arch_source = archs_to_export(ctx)
        out = _out_dir(ctx)
        settings = _settings(ctx, formats, source)
        _check_resume(out, settings)
        device = _target(t)
        atomic_write_text(out / META, json.dumps({**settings, "source": arch_source, "archs": len(archs),
                                                  "target": device, "torch": torch.__version__},
                                                 indent=2, sort_keys=True))
        for fmt in formats:  # half-written files of a killed run (atomic_write's temp files)
            ext = EXTENSIONS[fmt]
            for stale in (out / fmt).glob(f".*.{ext}.*.tmp"):
                stale.unlink()
        rows, made, kept = [], 0, 0
        t0 = time.perf_counter()
        prev = torch.get_num_threads()
        torch.set_num_threads(int(t.threads))
        try:
            for net_id, arch in enumerate(progress(archs, desc="export")):
                stem = file_stem(space, net_id, arch)
                files, net = {}, None
                for fmt in formats:
                    rel = Path(fmt) / f"{stem}.{EXTENSIONS[fmt]}"
                    files[FILE_COLUMNS[fmt]] = rel.as_posix()
                    if (out / rel).is_file():  # written atomically: there means complete
                        kept += 1
                        continue
                    net = net if net is not None else source.subnet(arch)
                    if fmt == "onnx":
                        export_onnx(net, arch.resolution, out / rel, int(t.opset))
                    elif fmt == "pytorch":
                        save_subnet(net, space, arch, out / rel, source.info)
                    else:
                        export_tflite(net, arch.resolution, out / rel)
                    made += 1
                rows.append((net_id, arch, files))
        finally:
            torch.set_num_threads(prev)
        sidecar = write_files(out / FILES, rows)
        manifest = write_manifest(out / MANIFEST, rows, device, str(t.unit))
        seconds = time.perf_counter() - t0
        tracker.log_params({"export.source": arch_source, "export.formats": ",".join(formats),
                            "export.weights": source.kind, "export.target": device})
        tracker.log_metrics({"archs": len(archs), "files_written": made, "files_kept": kept, "seconds": seconds})
        for path in (manifest, sidecar, out / META):
            tracker.log_artifact(path)
        log.info("export: %d archs from %s, %s weights -> %s (%d files written, %d already there, %.1f s)",
                 len(archs), arch_source, source.kind, manifest, made, kept, seconds)
        return {"manifest": manifest, "files": sidecar, "out_dir": out, "archs": len(archs), "written": made,
                "kept": kept, "weights": source.kind}
