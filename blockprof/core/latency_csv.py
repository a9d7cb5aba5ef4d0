"""The seed's latency CSV format, read as the seed reads it and written append-and-resume.

    net_id,net_str,device,resolution,lat unit,end-to-end lat
    0,mbconv3_e6_k7->mbconv3_e4_k5|...,npu,224,us,12345.6

The paper's own reader skips one header line and splits every other non-empty line on
"," into exactly six positional fields, whatever the header calls them. Files written
here pass that reader (six fields, no quoting: a field holding "," or a quote is
refused); files read here are read the same way - six positional fields after one
header line - so a header with other names is one warning, not a refusal. A malformed
row is an error naming the file and line - never a silent skip.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write
from blockprof.core.csvrows import parse_arch, parse_id, read_table
from blockprof.core.space import Arch, DesignSpace

log = logging.getLogger(__name__)

HEADER = ["net_id", "net_str", "device", "resolution", "lat unit", "end-to-end lat"]
NET_ID, NET_STR, DEVICE, RESOLUTION, UNIT, LATENCY = range(6)  # the seed's field positions
UNIT_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_warned: set[str] = set()  # files whose header names were already warned about


@dataclass(frozen=True)
class LatencyRecord:
    net_id: int
    arch: Arch
    device: str
    latency_ms: float


def check_seed_header(path: Path, header: list[str]) -> None:
    """Six columns, as the seed's reader splits them; other names are read by position, with one warning."""
    if len(header) != len(HEADER):
        raise UserError(f"{path}:1: {len(header)} columns; the seed's latency CSV has exactly {len(HEADER)} "
                        f"({','.join(HEADER)}), read by position")
    if header != HEADER and str(path) not in _warned:
        _warned.add(str(path))
        log.warning("%s: header %s is not the seed's (%s); reading its six columns by position as the seed does",
                    path, ",".join(header), ",".join(HEADER))


def seed_field(value, what: str) -> str:
    """A field the seed's plain split on "," reads back whole (no comma, quote or line break)."""
    text = str(value)
    if any(c in text for c in ',"\r\n'):
        raise UserError(f"{what} {text!r} cannot go into a seed-format CSV: its reader splits lines on ',' "
                        "and does not unquote (use a name without commas, quotes or line breaks)")
    return text


def seed_row(net_id: int, arch: Arch, device: str, unit: str, latency: str) -> list[str]:
    """One row in the seed's six columns, every field checked with `seed_field`."""
    return [str(int(net_id)), seed_field(arch.text, "arch"), seed_field(device, "device name"),
            str(int(arch.resolution)), seed_field(unit, "latency unit"), seed_field(latency, "latency")]


def write_seed_csv(path: str | os.PathLike, rows: Iterable[list[str]]) -> Path:
    """A whole seed-format CSV (header + `seed_row` rows), written atomically."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(HEADER)
            w.writerows(rows)
    return atomic_write(path, write)


def read_latency_csv(path: str | os.PathLike, space: DesignSpace, require_latency: bool = True,
                     device: str | None = None, device_filter: str | None = None) -> list[LatencyRecord]:
    """All rows of a seed-format CSV, validated against `space`; latencies converted to ms.

    With `device`, the rows must all be for that device (see :func:`select_device`)."""
    path = Path(path)
    records = _read_rows(path, space, require_latency)
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
    _, rows = read_table(path, "latency CSV", f"the seed's header {','.join(HEADER)}",
                         lambda header: check_seed_header(path, header))
    records: list[LatencyRecord] = []
    seen: dict[int, int] = {}
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        net_id = parse_id(where, "net_id", row[NET_ID], seen, line_no)
        arch = parse_arch(where, space, row[NET_STR], row[RESOLUTION])
        lat = math.nan
        if require_latency:
            unit, raw = row[UNIT].strip(), row[LATENCY].strip()
            if unit not in UNIT_TO_MS:
                raise UserError(f"{where}: latency unit '{unit}' not one of {list(UNIT_TO_MS)}")
            try:
                lat = float(raw) * UNIT_TO_MS[unit]
            except ValueError:
                raise UserError(f"{where}: latency '{raw}' is not a number") from None
            if not math.isfinite(lat) or lat <= 0:
                raise UserError(f"{where}: latency {raw} must be a positive number")
        records.append(LatencyRecord(net_id, arch, row[DEVICE].strip(), lat))
    return records


class LatencyCSVWriter:
    """Appends rows as they are measured (flushed and fsynced), so an interrupted run
    loses at most the row being measured; `done_ids` tells a rerun what to skip.

    `device`, when given, is checked now (it must fit the seed's plain split), before
    anything is measured."""

    def __init__(self, path: str | os.PathLike, space: DesignSpace, device: str | None = None):
        if device is not None:
            seed_field(device, "device name")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done_ids: set[int] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._repair_tail()
            self.done_ids = {r.net_id for r in read_latency_csv(self.path, space)}
        else:
            with open(self.path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(HEADER)

    def _repair_tail(self) -> None:
        """Drop a last line cut short by a kill (no trailing newline)."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def append(self, net_id: int, arch: Arch, device: str, latency_ms: float) -> None:
        row = seed_row(net_id, arch, device, "ms", f"{latency_ms:.6f}")
        with open(self.path, "a", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self.done_ids.add(net_id)


def write_latency_csv(path: str | os.PathLike, rows: Iterable[tuple[int, Arch, str, float]]) -> Path:
    """Write a whole CSV of latencies (ms) atomically (tmp file + rename)."""
    return write_seed_csv(path, [seed_row(net_id, arch, device, "ms", f"{lat:.6f}")
                                 for net_id, arch, device, lat in rows])


def read_archs_csv(path: str | os.PathLike, space: DesignSpace) -> list[Arch]:
    """Archs from a seed-format CSV (latency columns optional); at least one."""
    archs = [r.arch for r in read_latency_csv(path, space, require_latency=False)]
    if not archs:
        raise UserError(f"{path}: no arch rows below the header")
    return archs


def archs_to_rows(archs: Sequence[Arch]) -> dict:
    return {"arch": [a.text for a in archs], "resolution": [a.resolution for a in archs]}
