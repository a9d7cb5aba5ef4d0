"""Every seed-format CSV blockprof writes passes the paper's own reader, and blockprof reads
these files as that reader does: one header line skipped, then six positional fields.

`seed_read` re-implements that reader from its description: it skips the first line and
splits every other non-empty line on "," into exactly six fields (net_id, net_str,
device, resolution, lat unit, latency) without looking at the header's names."""
from __future__ import annotations

import gzip
import logging
import subprocess
import sys

import numpy as np
import pytest

from blockprof.app.main import execute
from blockprof.core.archlist import read_arch_list
from blockprof.core.latency_csv import HEADER, LatencyCSVWriter, read_latency_csv, write_latency_csv
from blockprof.core.registry import build_space
from conftest import REPO, compose, run_cli

RES = 160


def seed_read(path, measured: bool = True) -> list[dict]:
    """The seed's positional reader (latency a number when the file is measured)."""
    with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as f:
        lines = f.readlines()[1:]
    rows = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        net_id, net_str, device, resolution, unit, latency = line.split(",")  # exactly six, else ValueError
        rows.append({"net_id": int(net_id), "net_str": net_str, "device": device, "resolution": int(resolution),
                     "unit": unit, "latency": float(latency) if measured else latency})
    return rows


@pytest.fixture(scope="module")
def space():
    return build_space("mbv3", resolutions=[RES])


def test_export_manifest_and_filled_csv_pass_the_seed_reader(tmp_path, space):
    # through the command line: the run folder is named after the target, not the composed device
    p = run_cli(["task=export", "space=mbv3", f"space.resolutions=[{RES}]", "task.num_archs=1", "task.target=myphone",
                 f"paths.output_root={tmp_path / 'out'}", "tracking=none"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    (manifest,) = (tmp_path / "out" / "runs" / "export").glob("*/*/manifest.csv")
    assert manifest.parent.parent.name == "mbv3-myphone"
    assert manifest.read_text().splitlines()[0] == ",".join(HEADER)
    rows = seed_read(manifest, measured=False)
    assert [r["net_id"] for r in rows] == [0] and {r["device"] for r in rows} == {"myphone"}
    assert {r["latency"] for r in rows} == {""} and {r["resolution"] for r in rows} == {RES}
    assert [a.text for a in read_arch_list(manifest, space).archs] == [r["net_str"] for r in rows]
    assert (manifest.parent / "files.csv").is_file()

    filled = tmp_path / "filled.csv"
    t = subprocess.run([sys.executable, str(REPO / "scripts" / "time_onnx_manifest.py"), str(manifest),
                        "--out", str(filled), "--warmup", "0", "--runs", "1"], capture_output=True, text=True,
                       timeout=300)
    assert t.returncode == 0, t.stderr
    timed = seed_read(filled)
    assert [r["net_str"] for r in timed] == [r["net_str"] for r in rows] and all(r["latency"] > 0 for r in timed)
    assert [r.latency_ms for r in read_latency_csv(filled, space)] == [r["latency"] for r in timed]


def test_measured_and_written_csvs_pass_the_seed_reader(tmp_path, space):
    measured = tmp_path / "measured.csv"
    execute(compose(["task=measure", "space=mbv3", "device=local_cpu", f"space.resolutions=[{RES}]",
                     "task.warmup=0", "task.rounds=1", "task.chunk_size=2", "task.references=1", "task.num_archs=2",
                     "task.retest_archs=0", f"task.csv={measured}", "tracking=none"], tmp_path / "o"),
            run_dir=tmp_path / "run")
    rows = seed_read(measured)
    assert [r["net_id"] for r in rows] == [0, 1] and {r["device"] for r in rows} == {"local_cpu"}
    assert [r.latency_ms for r in read_latency_csv(measured, space)] == pytest.approx([r["latency"] for r in rows])

    archs = space.sample(np.random.default_rng(0), 3)
    written = write_latency_csv(tmp_path / "w.csv", [(i, a, "npu", 1.5 + i) for i, a in enumerate(archs)])
    appended = LatencyCSVWriter(tmp_path / "a.csv", space, device="npu")
    for i, a in enumerate(archs):
        appended.append(i, a, "npu", 2.0 + i)
    for path in (written, appended.path):
        assert [r["net_str"] for r in seed_read(path)] == [a.text for a in archs]


def test_any_header_names_are_read_by_position_with_one_warning(tmp_path, space, caplog):
    archs = space.sample(np.random.default_rng(1), 2)
    # the seed's training script calls the latency column "overall npu lat"
    path = tmp_path / "renamed.csv"
    path.write_text("id,arch,dev,res,unit,overall npu lat\n"
                    + "".join(f"{i},{a.text},npu,{a.resolution},us,{1000 + i}\n" for i, a in enumerate(archs)))
    with caplog.at_level(logging.WARNING):
        recs = read_latency_csv(path, space)
        lst = read_arch_list(path, space)
    assert [r.latency_ms for r in recs] == pytest.approx([1.0, 1.001]) and [r.device for r in recs] == ["npu", "npu"]
    assert lst.format == "seed" and lst.archs == archs == [r.arch for r in recs]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]
    assert len(warned) == 1 and "by position" in warned[0].getMessage()
    assert len(seed_read(path)) == 2

    # the row checks stay strict: a seventh field is refused with the line, as the seed's split would fail
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text() + f"9,{archs[0].text},npu,{RES},us,5,extra\n")
    with pytest.raises(Exception) as exc:
        read_latency_csv(bad, space)
    assert f"{bad}:4: expected 6 fields, found 7" in str(exc.value)
    with pytest.raises(ValueError):
        seed_read(bad)


def test_committed_measurements_pass_the_seed_reader():
    """The datasets task=measure wrote and the repository ships are seed files too."""
    paths = sorted((REPO / "scripts" / "data").glob("ofa_*_lat_data.csv.gz"))
    assert paths
    for path in paths:
        rows = seed_read(path)
        assert len(rows) > 100 and all(r["latency"] > 0 and r["unit"] == "ms" for r in rows), path
