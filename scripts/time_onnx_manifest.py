"""Fill a `task=export` manifest with ONNX Runtime latencies measured on this machine.

    python scripts/time_onnx_manifest.py outputs/runs/export/<run>/manifest.csv \
        --out data/ofa_mbv3_myphone_lat_data.csv [--threads 1] [--warmup 3] [--runs 10]

A stand-in for a device's own benchmark tool (onnxruntime_perf_test, an Android
TFLite/NNAPI benchmark binary - see docs/export.md): each row's ONNX file is loaded
into an InferenceSession (CPU execution provider, `--threads` intra-op threads, one
inter-op thread, full graph optimisation), run `--warmup` times untimed, then
`--runs` times; the median goes into `end-to-end lat` (`lat unit` ms). The manifest
holds the seed's six columns only; each row's ONNX file is found through the sidecar
`files.csv` beside it (net_id -> onnx_file). Every other field is kept, so the output
is the manifest filled in: a seed-format latency CSV (six columns) that
`task=train_predictor task.csv=<out>` takes.

The output is rewritten atomically after every row; rerunning with the same `--out`
keeps the rows already timed (same net_id, arch and resolution) and times the rest.
`--clock cpu` times with the thread's CPU clock (1 thread only), which leaves out
time the scheduler gives to other jobs on a shared machine.
"""
from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from blockprof.common.fileio import atomic_write

log = logging.getLogger("time_onnx_manifest")
LAT, UNIT = "end-to-end lat", "lat unit"
FIELDS = ("net_id", "net_str", "device", "resolution", "lat unit", "end-to-end lat")  # the seed's, by position
FILES = "files.csv"


def read_manifest(path: Path) -> list[dict]:
    """Rows of a seed-format CSV as the seed reads it: one header line, then six fields by position."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) != len(FIELDS):
            sys.exit(f"error: {path}:1: not a seed-format manifest (expected six columns {','.join(FIELDS)})")
        rows = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(FIELDS):
                sys.exit(f"error: {path}:{reader.line_num}: expected {len(FIELDS)} fields, found {len(row)}")
            rows.append(dict(zip(FIELDS, row)))
    if not rows:
        sys.exit(f"error: {path}: no rows below the header")
    return rows


def read_files(manifest: Path) -> dict[str, str]:
    """net_id -> ONNX file (relative to the export folder), from the sidecar beside the manifest."""
    path = manifest.with_name(FILES)
    if not path.is_file():
        sys.exit(f"error: {path} not found: the sidecar task=export writes beside {manifest.name}, naming each "
                 "net_id's files")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "net_id" not in (reader.fieldnames or []) or "onnx_file" not in reader.fieldnames:
            sys.exit(f"error: {path}:1: lacks the net_id / onnx_file columns (export with task.formats including onnx)")
        return {r["net_id"].strip(): r["onnx_file"] for r in reader if r["onnx_file"]}


def time_model(path: Path, threads: int, warmup: int, runs: int, clock: str) -> float:
    """Median latency (ms) of one ONNX file."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if not all(isinstance(d, int) for d in inp.shape):
        raise ValueError(f"{path}: input {inp.name} has a dynamic shape {inp.shape}; export with static shapes")
    feed = {inp.name: np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)}
    tick = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = tick()
        sess.run(None, feed)
        times.append((tick() - t0) * 1e3)
    return statistics.median(times)


def write_filled(path: Path, rows: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(FIELDS)
            w.writerows([r[k] for k in FIELDS] for r in rows)
    atomic_write(path, write)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path, help="manifest.csv written by task=export")
    ap.add_argument("--out", type=Path, default=None, help="filled CSV (default: <manifest>_ort.csv beside it)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model; the median is kept")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--device", default=None, help="write this name into the device column")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        sys.exit("error: --threads and --runs must be >= 1, --warmup >= 0")
    if args.device is not None and (not args.device.strip() or any(c in args.device for c in ',"\r\n')):
        sys.exit(f"error: --device {args.device!r}: the seed's reader splits lines on ',' (no commas, quotes or "
                 "line breaks in the name)")
    if args.clock == "cpu" and args.threads != 1:
        sys.exit("error: --clock cpu needs --threads 1 (the thread CPU clock sees only the calling thread)")
    manifest = args.manifest.resolve()
    if not manifest.is_file():
        sys.exit(f"error: manifest not found: {manifest}")
    out = (args.out or manifest.with_name(manifest.stem + "_ort.csv")).resolve()
    rows = read_manifest(manifest)
    files = read_files(manifest)
    key = lambda r: (r["net_id"].strip(), r["net_str"], r["resolution"].strip())  # noqa: E731
    done = {}
    if out.is_file() and out != manifest:  # resume: keep rows timed before (same id, arch, resolution)
        done = {key(r): r for r in read_manifest(out) if r[LAT].strip()}
    for row in rows:
        prev = done.get(key(row))
        if prev is not None:
            row[LAT], row[UNIT] = prev[LAT], prev[UNIT]
        if args.device:
            row["device"] = args.device
    t0 = time.perf_counter()
    timed = []
    for i, row in enumerate(rows):
        if row[LAT].strip():
            continue
        rel = files.get(row["net_id"].strip())
        if rel is None:
            sys.exit(f"error: {manifest}:{i + 2}: net_id {row['net_id']} has no onnx_file in {FILES}")
        model = manifest.parent / rel
        if not model.is_file():
            sys.exit(f"error: {manifest}:{i + 2}: ONNX file {model} not found")
        ms = time_model(model, args.threads, args.warmup, args.runs, args.clock)
        row[LAT], row[UNIT] = f"{ms:.6f}", "ms"
        timed.append(ms)
        log.info("%d/%d  net_id %s  %s px  %.3f ms", i + 1, len(rows), row["net_id"], row["resolution"], ms)
        write_filled(out, rows)  # every row so far survives a kill; untimed rows stay empty
    write_filled(out, rows)
    lat = [float(r[LAT]) for r in rows]
    print(f"timed {len(timed)} of {len(rows)} models ({len(rows) - len(timed)} kept from {out.name}) in "
          f"{time.perf_counter() - t0:.1f} s with ONNX Runtime ({args.threads} thread(s), median of {args.runs}, "
          f"{args.clock} clock): {min(lat):.3f} / {statistics.median(lat):.3f} / {max(lat):.3f} ms "
          f"min / median / max -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
