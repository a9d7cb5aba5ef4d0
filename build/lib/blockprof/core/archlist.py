"""One reader for every list of archs blockprof writes or takes in.

Each output that lists archs can be the next step's input (`task=evaluate`,
`task=measure`, `task=export` take `task.archs_csv`):

    format   written by                        identifying columns
    seed     the seed's latency CSVs,          net_id, net_str, resolution (device, lat unit,
             task=measure, task=export         end-to-end lat and others may follow)
    archs    task=evaluate (archs.csv)         net_id, arch, resolution, <metrics>
    search   task=search (scored.csv,          eval_id, iteration, origin, arch, resolution,
             front.csv, best.csv)              <metrics>, on_front
    samples  task=profile (samples.csv)        group, slot, ..., arch, resolution, <metrics>

The format is told from the header. Anything malformed (empty file, a header
only, a header of no known format, a wrong field count, a bad arch, a resolution
the space lacks) is a UserError naming the file and line - never a silent skip.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, DesignSpace


@dataclass(frozen=True)
class _Format:
    name: str
    required: tuple[str, ...]   # columns that identify the format
    arch_col: str
    id_col: str | None          # unique integer id per row, if the format has one
    written_by: str


# Order matters: the first format whose columns are all present wins (a seed CSV
# that also carries an `arch` column is still a seed CSV).
FORMATS = (
    _Format("seed", ("net_id", "net_str", "resolution"), "net_str", "net_id",
            "seed latency CSV: net_id,net_str,resolution,..."),
    _Format("search", ("eval_id", "arch", "resolution"), "arch", "eval_id",
            "search scored/front/best.csv: eval_id,...,arch,resolution,..."),
    _Format("samples", ("group", "slot", "arch", "resolution"), "arch", None,
            "profile samples.csv: group,slot,...,arch,resolution,..."),
    _Format("archs", ("net_id", "arch", "resolution"), "arch", "net_id",
            "evaluate archs.csv: net_id,arch,resolution,..."),
)


@dataclass(frozen=True)
class ArchList:
    """The archs of one file, in file order, with where each came from."""
    path: Path
    format: str
    archs: list[Arch]
    ids: list[int]     # the row's own id (net_id / eval_id), or its 0-based data-row index
    lines: list[int]   # 1-based line numbers in the file

    def __len__(self) -> int:
        return len(self.archs)


def detect_format(header: list[str]) -> _Format | None:
    cols = set(header)
    for fmt in FORMATS:
        if all(c in cols for c in fmt.required):
            return fmt
    return None


def read_arch_list(path: str | os.PathLike, space: DesignSpace) -> ArchList:
    """Every arch listed in `path` (any format above), validated against `space`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"arch list not found: {path}")
    try:
        return _read(path, space)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text CSV (undecodable byte at offset {exc.start})") from None


def _read(path: Path, space: DesignSpace) -> ArchList:
    known = "; ".join(f.written_by for f in FORMATS)
    archs: list[Arch] = []
    ids: list[int] = []
    lines: list[int] = []
    seen: dict[int, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM is not a column name
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise UserError(f"{path}:1: not a CSV file ({exc})") from None
        if header is None or not any(h.strip() for h in header):
            raise UserError(f"{path}: empty file (expected the header of an arch list - {known})")
        header = [h.strip() for h in header]
        fmt = detect_format(header)
        if fmt is None:
            raise UserError(f"{path}:1: not an arch list: columns {header[:8]}{' ...' if len(header) > 8 else ''} "
                            f"match no known format ({known})")
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise UserError(f"{path}:1: duplicate column(s) {dup}")
        col = {h: i for i, h in enumerate(header)}
        line_no = 1
        try:
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                where = f"{path}:{line_no}"
                if len(row) != len(header):
                    raise UserError(f"{where}: expected {len(header)} fields, found {len(row)}")
                if fmt.id_col is not None:
                    raw = row[col[fmt.id_col]].strip()
                    try:
                        rid = int(raw)
                    except ValueError:
                        raise UserError(f"{where}: {fmt.id_col} '{raw}' is not an integer") from None
                    if rid in seen:
                        raise UserError(f"{where}: duplicate {fmt.id_col} {rid} (first on line {seen[rid]})")
                    seen[rid] = line_no
                else:
                    rid = len(archs)
                try:
                    arch = space.parse(row[col[fmt.arch_col]], row[col["resolution"]].strip())
                except UserError as exc:
                    raise UserError(f"{where}: {exc}") from None
                archs.append(arch)
                ids.append(rid)
                lines.append(line_no)
        except csv.Error as exc:
            raise UserError(f"{path}:{line_no + 1}: malformed CSV ({exc})") from None
    if not archs:
        raise UserError(f"{path}: no arch rows below the header (format {fmt.name})")
    return ArchList(path, fmt.name, archs, ids, lines)


def read_archs(path: str | os.PathLike, space: DesignSpace) -> list[Arch]:
    """The archs listed in `path`, in file order (see `read_arch_list`)."""
    return read_arch_list(path, space).archs
