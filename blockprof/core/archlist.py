"""One reader for every list of archs blockprof writes or takes in.

Each output that lists archs can be the next step's input (`task=evaluate`,
`task=measure`, `task=export` take `task.archs_csv`):

    format   written by                        columns
    seed     the seed's latency CSVs,          exactly six, by position: net_id, net_str,
             task=measure, task=export         device, resolution, lat unit, end-to-end lat
    archs    task=evaluate (archs.csv)         net_id, arch, resolution, <metrics>
    search   task=search (scored.csv,          eval_id, iteration, origin, arch, resolution,
             front.csv, best.csv)              <metrics>, on_front
    samples  task=profile (samples.csv)        group, slot, ..., arch, resolution, <metrics>

The format is told from the header: the seed's header, else the identifying columns of
another format, else any six columns, read by position as the seed's own reader does
(with one warning that the names are not the seed's). Anything malformed (empty file, a
header only, a header of no known format, a wrong field count, a bad arch, a resolution
the space lacks) is a UserError naming the file and line - never a silent skip; the row
checks are the ones every CSV reader shares (`blockprof/core/csvrows.py`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.core.csvrows import parse_arch, parse_id, read_table
from blockprof.core.latency_csv import HEADER, NET_ID, NET_STR, RESOLUTION, check_seed_header
from blockprof.core.space import Arch, DesignSpace


@dataclass(frozen=True)
class _Format:
    name: str
    required: tuple[str, ...]   # columns that identify the format
    arch_col: str
    id_col: str | None          # unique integer id per row, if the format has one
    written_by: str


# Named formats, first match wins; the seed's is told apart by its exact header, or by
# having six columns that match no named format (see `detect_format`).
SEED = _Format("seed", tuple(HEADER), "net_str", "net_id", "seed latency CSV: six columns " + ",".join(HEADER))
FORMATS = (
    SEED,
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
    if header == HEADER:
        return SEED
    cols = set(header)
    for fmt in FORMATS[1:]:
        if all(c in cols for c in fmt.required):
            return fmt
    if len(header) == len(HEADER) or {"net_id", "net_str"} <= cols:
        return SEED  # positional, as the seed reads it (its header check says what is wrong)
    return None


def read_arch_list(path: str | os.PathLike, space: DesignSpace) -> ArchList:
    """Every arch listed in `path` (any format above), validated against `space`."""
    path = Path(path)
    known = "; ".join(f.written_by for f in FORMATS)
    found: list[_Format] = []

    def check_header(header: list[str]) -> None:
        fmt = detect_format(header)
        if fmt is None:
            raise UserError(f"{path}:1: not an arch list: columns {header[:8]}{' ...' if len(header) > 8 else ''} "
                            f"match no known format ({known})")
        if fmt is SEED:
            check_seed_header(path, header)
        found.append(fmt)

    header, rows = read_table(path, "arch list", f"the header of an arch list - {known}", check_header)
    fmt = found[0]
    if fmt is SEED:
        id_i, arch_i, res_i = NET_ID, NET_STR, RESOLUTION
    else:
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise UserError(f"{path}:1: duplicate column(s) {dup}")
        col = {h: i for i, h in enumerate(header)}
        id_i = col[fmt.id_col] if fmt.id_col is not None else None
        arch_i, res_i = col[fmt.arch_col], col["resolution"]
    archs: list[Arch] = []
    ids: list[int] = []
    lines: list[int] = []
    seen: dict[int, int] = {}
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        rid = parse_id(where, fmt.id_col, row[id_i], seen, line_no) if id_i is not None else len(archs)
        archs.append(parse_arch(where, space, row[arch_i], row[res_i]))
        ids.append(rid)
        lines.append(line_no)
    if not archs:
        raise UserError(f"{path}: no arch rows below the header (format {fmt.name})")
    return ArchList(path, fmt.name, archs, ids, lines)


def read_archs(path: str | os.PathLike, space: DesignSpace) -> list[Arch]:
    """The archs listed in `path`, in file order (see `read_arch_list`)."""
    return read_arch_list(path, space).archs
