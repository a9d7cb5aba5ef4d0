"""The seed's latency CSV format, read strictly and written append-and-resume.

    net_id,net_str,device,resolution,lat unit,end-to-end lat
    0,mbconv3_e6_k7->mbconv3_e4_k5|...,npu,224,us,12345.6

A malformed row is an error naming the file and line - never a silent skip.
"""
from __future__ import annotations

import csv
import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write
from blockprof.core.space import Arch, DesignSpace

HEADER = ["net_id", "net_str", "device", "resolution", "lat unit", "end-to-end lat"]
UNIT_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class LatencyRecord:
    net_id: int
    arch: Arch
    device: str
    latency_ms: float


def read_latency_csv(path: str | os.PathLike, space: DesignSpace, require_latency: bool = True,
                     device: str | None = None, device_filter: str | None = None) -> list[LatencyRecord]:
    """All rows of a seed-format CSV, validated against `space`; latencies converted to ms.

    With `device`, the rows must all be for that device (see :func:`select_device`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"latency CSV not found: {path}")
    try:
        records = _read_rows(path, space, require_latency)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text CSV (undecodable byte at offset {exc.start}); "
                        f"expected the seed's format with header {','.join(HEADER)}") from None
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV ({exc})") from None
    if device is not None or device_filter is not None:
        records = select_device(records, device, path, device_filter)
    return records


def select_device(records: list[LatencyRecord], device: str | None, path: Path,
                  device_filter: str | None = None) -> list[LatencyRecord]:
    """The rows for one device, never silently mixed.

    Without `device_filter` every row's device column must name `device` (case aside;
    a file whose column is empty throughout is taken as it is); rows of several devices
    or of another one are refused. With it, only its rows are kept (at least one)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.device] = counts.get(r.device, 0) + 1
    shown = ", ".join(f"{k or '(empty)'}: {v}" for k, v in sorted(counts.items()))
    if device_filter is not None:
        want = str(device_filter).strip().lower()
        kept = [r for r in records if r.device.lower() == want]
        if not kept:
            raise UserError(f"{path}: no rows for device '{device_filter}' (task.device_filter); "
                            f"rows per device: {shown}")
        return kept
    if set(counts) <= {""}:
        return records
    names = {k.lower() for k in counts}
    if len(names) > 1:
        raise UserError(f"{path}: rows of several devices ({shown}); keep one device per CSV, "
                        f"or train on one with task.device_filter=<name>")
    (only,) = names
    if device is not None and only != str(device).strip().lower():
        raise UserError(f"{path}: every row is for device '{next(iter(counts))}', not {device}; use the CSV "
                        f"measured on {device}, or task.device_filter={next(iter(counts))} to train on it anyway")
    return records


def _read_rows(path: Path, space: DesignSpace, require_latency: bool) -> list[LatencyRecord]:
    records: list[LatencyRecord] = []
    seen: set[int] = set()
    opener = gzip.open if str(path).endswith(".gz") else open  # committed datasets are gzipped
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:  # a spreadsheet's BOM is fine
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: empty file (expected header {','.join(HEADER)})")
        header = [h.strip() for h in header]
        need = HEADER if require_latency else HEADER[:2] + HEADER[3:4]
        missing = [h for h in need if h not in header]
        if missing:
            raise UserError(f"{path}:1: header lacks column(s) {missing} (expected {','.join(HEADER)})")
        col = {h: header.index(h) for h in header}
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}:{line_no}"
            if len(row) != len(header):
                raise UserError(f"{where}: expected {len(header)} fields, found {len(row)}")
            try:
                net_id = int(row[col["net_id"]]) if "net_id" in col else line_no - 2
            except ValueError:
                raise UserError(f"{where}: net_id '{row[col['net_id']]}' is not an integer") from None
            if net_id in seen:
                raise UserError(f"{where}: duplicate net_id {net_id}")
            seen.add(net_id)
            try:
                arch = space.parse(row[col["net_str"]], row[col["resolution"]])
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            lat = math.nan
            if require_latency:
                unit = row[col["lat unit"]].strip()
                if unit not in UNIT_TO_MS:
                    raise UserError(f"{where}: latency unit '{unit}' not one of {list(UNIT_TO_MS)}")
                try:
                    lat = float(row[col["end-to-end lat"]]) * UNIT_TO_MS[unit]
                except ValueError:
                    raise UserError(f"{where}: latency '{row[col['end-to-end lat']]}' is not a number") from None
                if not math.isfinite(lat) or lat <= 0:
                    raise UserError(f"{where}: latency {row[col['end-to-end lat']]} must be a positive number")
            dev = row[col["device"]].strip() if "device" in col else ""
            records.append(LatencyRecord(net_id, arch, dev, lat))
    return records


class LatencyCSVWriter:
    """Appends rows as they are measured (flushed and fsynced), so an interrupted run
    loses at most the row being measured; `done_ids` tells a rerun what to skip."""

    def __init__(self, path: str | os.PathLike, space: DesignSpace):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done_ids: set[int] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._repair_tail()
            self.done_ids = {r.net_id for r in read_latency_csv(self.path, space)}
        else:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(HEADER)

    def _repair_tail(self) -> None:
        """Drop a last line cut short by a kill (no trailing newline)."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def append(self, net_id: int, arch: Arch, device: str, latency_ms: float) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([net_id, arch.text, device, arch.resolution, "ms", f"{latency_ms:.6f}"])
            f.flush()
            os.fsync(f.fileno())
        self.done_ids.add(net_id)


def write_latency_csv(path: str | os.PathLike, rows: Iterable[tuple[int, Arch, str, float]]) -> Path:
    """Write a whole CSV atomically (tmp file + rename)."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            for net_id, arch, device, lat in rows:
                w.writerow([net_id, arch.text, device, arch.resolution, "ms", f"{lat:.6f}"])

    return atomic_write(path, write)


def read_archs_csv(path: str | os.PathLike, space: DesignSpace) -> list[Arch]:
    """Archs from a seed-format CSV (latency columns optional); at least one."""
    archs = [r.arch for r in read_latency_csv(path, space, require_latency=False)]
    if not archs:
        raise UserError(f"{path}: no arch rows below the header")
    return archs


def archs_to_rows(archs: Sequence[Arch]) -> dict:
    return {"arch": [a.text for a in archs], "resolution": [a.resolution for a in archs]}
