"""The row checks every CSV reader of blockprof shares (arch lists, the seed's latency CSVs).

A file is read whole (these lists are small), its header and data rows come back with
the line each row starts on, and anything malformed is a UserError naming the file and
line - never a silent skip: an unreadable or binary file, an empty file, a row with
another field count than the header, a non-integer or repeated id, an arch or
resolution the space refuses. Blank lines and a spreadsheet's BOM are fine.
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Callable

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, DesignSpace

Row = tuple[int, list[str]]  # (1-based line number, fields)


def read_table(path: str | Path, what: str, expected: str,
               on_header: Callable[[list[str]], None] | None = None) -> tuple[list[str], list[Row]]:
    """Header (names stripped) and the non-blank data rows of `path`, each with as many
    fields as the header. `what` names the file in "not found"; `expected` says what a
    header should look like (shown for an empty or undecodable file); `on_header` checks
    the header before any row is (a wrong header is the first thing to hear about)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    opener = gzip.open if path.name.endswith(".gz") else open  # committed datasets are gzipped
    line_no = 1
    try:
        # -sig: a spreadsheet's BOM is not part of the first column's name
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise UserError(f"{path}: empty file (expected {expected})")
            header = [h.strip() for h in header]
            if on_header is not None:
                on_header(header)
            rows: list[Row] = []
            line_no = reader.line_num + 1
            for row in reader:
                if row and any(c.strip() for c in row):
                    if len(row) != len(header):
                        raise UserError(f"{path}:{line_no}: expected {len(header)} fields, found {len(row)}")
                    rows.append((line_no, row))
                line_no = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text CSV (undecodable byte at offset {exc.start}); expected {expected}") from None
    except (csv.Error, EOFError, OSError) as exc:  # a NUL byte, a torn gzip stream
        raise UserError(f"{path}:{line_no}: malformed CSV ({exc})") from None
    return header, rows


def parse_id(where: str, name: str, raw: str, seen: dict[int, int], line_no: int) -> int:
    """A row's integer id, unique in the file (`seen`: id -> line it was first on)."""
    raw = raw.strip()
    try:
        rid = int(raw)
    except ValueError:
        raise UserError(f"{where}: {name} '{raw}' is not an integer") from None
    if rid in seen:
        raise UserError(f"{where}: duplicate {name} {rid} (first on line {seen[rid]})")
    seen[rid] = line_no
    return rid


def parse_arch(where: str, space: DesignSpace, text: str, resolution: str) -> Arch:
    """The row's arch, checked by the space (blocks, unit depths, resolution)."""
    try:
        return space.parse(text, resolution.strip())
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
