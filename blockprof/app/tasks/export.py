"""task=export: archs as model files for a device blockprof cannot time itself.

    python run.py task=export space=mbv3 task.num_archs=200
    python run.py task=export space=mbv3 task.archs_csv=outputs/runs/search/<run>/front.csv

Writes, for sampled archs (seeded) or the archs of a list (`task.archs_csv`: a seed CSV,
archs.csv, a search's front/scored/best.csv, a profile's samples.csv), one ONNX file
per (arch, resolution) - input `input` float32 [1, 3, r, r], output `logits`, shapes
static - plus `manifest.csv` in the seed's latency CSV format with the latency column
empty and an `onnx_file` column. Time each file with the device's own tool, fill in
`end-to-end lat` (in `lat unit`) and train a predictor on it:

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
from blockprof.common.fileio import atomic_write, atomic_write_text
from blockprof.common.progress import progress
from blockprof.core.archlist import read_arch_list
from blockprof.core.latency_csv import HEADER
from blockprof.core.space import Arch, DesignSpace
from blockprof.infra.tracking import resolve_path
from blockprof.metrics.engines import ONNX_INPUT, ONNX_OUTPUT, export_onnx

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tflite")
FILE_COLUMNS = {"onnx": "onnx_file", "tflite": "tflite_file"}
INPUT_NAME, OUTPUT_NAME = ONNX_INPUT, ONNX_OUTPUT
MANIFEST, META, LOCK = "manifest.csv", "export.json", ".export.lock"


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


def _check_formats(formats) -> list[str]:
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
    return list(dict.fromkeys(fmts))


def _out_dir(ctx) -> Path:
    t = ctx.cfg.task
    return resolve_path(t.out_dir, ctx.cfg) if t.get("out_dir") else Path(ctx.run_dir)


def _settings(ctx, formats) -> dict:
    s = ctx.space
    return {"format": "blockprof.export", "space": s.name, "width_mult": s.width_mult,
            "resolutions": list(s.resolutions), "opset": int(ctx.cfg.task.opset), "formats": formats,
            "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "batch": 1},
            "output": OUTPUT_NAME}


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


def write_manifest(path: Path, rows: list[tuple[int, Arch, dict]], device: str, unit: str) -> Path:
    """The seed's CSV header, latency empty, then one column per file format."""
    cols = sorted({c for _, _, files in rows for c in files})

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER + cols)
            for net_id, arch, files in rows:
                w.writerow([net_id, arch.text, device, arch.resolution, unit, ""] + [files.get(c, "") for c in cols])
    return atomic_write(path, write)


class ExportTask(Task):
    """ONNX (and optionally TFLite) files per arch plus a seed-format manifest to fill."""
    groups = ("space",)

    def validate(self, ctx) -> None:
        _check_formats(self.cfg.formats)
        if int(self.cfg.opset) < 7:
            raise UserError(f"task.opset must be >= 7, not {self.cfg.opset}")
        archs_to_export(ctx)
        out = _out_dir(ctx)
        if self.cfg.get("out_dir"):
            _check_out_dir(out)
        _check_resume(out, _settings(ctx, _check_formats(self.cfg.formats)))
        if self.cfg.get("out_dir"):
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
        formats = _check_formats(t.formats)
        archs, source = archs_to_export(ctx)
        out = _out_dir(ctx)
        settings = _settings(ctx, formats)
        _check_resume(out, settings)
        device = str(t.target or ctx.cfg.device.name)
        atomic_write_text(out / META, json.dumps({**settings, "source": source, "archs": len(archs),
                                                  "target": device, "torch": torch.__version__},
                                                 indent=2, sort_keys=True))
        for fmt in formats:  # half-written files of a killed run (atomic_write's temp files)
            for stale in (out / fmt).glob(f".*.{fmt}.*.tmp"):
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
                    rel = Path(fmt) / f"{stem}.{fmt}"
                    files[FILE_COLUMNS[fmt]] = rel.as_posix()
                    if (out / rel).is_file():  # written atomically: there means complete
                        kept += 1
                        continue
                    net = net if net is not None else space.build_subnet(arch)
                    if fmt == "onnx":
                        export_onnx(net, arch.resolution, out / rel, int(t.opset))
                    else:
                        export_tflite(net, arch.resolution, out / rel)
                    made += 1
                rows.append((net_id, arch, files))
        finally:
            torch.set_num_threads(prev)
        manifest = write_manifest(out / MANIFEST, rows, device, str(t.unit))
        seconds = time.perf_counter() - t0
        tracker.log_params({"export.source": source, "export.formats": ",".join(formats)})
        tracker.log_metrics({"archs": len(archs), "files_written": made, "files_kept": kept, "seconds": seconds})
        tracker.log_artifact(manifest)
        tracker.log_artifact(out / META)
        log.info("export: %d archs from %s -> %s (%d files written, %d already there, %.1f s)",
                 len(archs), source, manifest, made, kept, seconds)
        return {"manifest": manifest, "out_dir": out, "archs": len(archs), "written": made, "kept": kept}
