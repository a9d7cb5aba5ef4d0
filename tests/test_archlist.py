"""One reader for arch lists: every file blockprof writes that lists archs is read back,
the format told from the header; malformed files fail in one line naming file and line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.archlist import read_arch_list, read_archs
from blockprof.core.latency_csv import write_latency_csv
from blockprof.core.registry import build_space
from conftest import compose

NOTE10 = ["space=mbv3", "device=note10", "tracking=none"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Real outputs of tiny real runs: a search, an evaluate and a profile."""
    root = tmp_path_factory.mktemp("archlist")
    out = {}
    search = execute(compose([*NOTE10, "task=search", "search.budget=80", "search.init_size=40",
                              "search.budget_per_iter=20", "search.plot=false"], root / "o"), run_dir=root / "search")
    out["front"], out["scored"] = root / "search" / "front.csv", root / "search" / "scored.csv"
    assert len(search["front"]) >= 2
    execute(compose([*NOTE10, "task=evaluate", "task.num_archs=7"], root / "o"), run_dir=root / "evaluate")
    out["archs"] = root / "evaluate" / "archs.csv"
    execute(compose([*NOTE10, "task=profile", "task.all=false", "task.blocks=[[1,0,7,6]]",
                     "task.num_archs=3"], root / "o"), run_dir=root / "profile")
    out["samples"] = root / "profile" / "samples.csv"
    space = build_space("mbv3")
    archs = space.sample(np.random.default_rng(3), 5)
    out["seed"] = write_latency_csv(root / "seed.csv", [(10 + i, a, "npu", 1.5 + i) for i, a in enumerate(archs)])
    return out


@pytest.mark.parametrize("kind,fmt,id_col", [("front", "search", "eval_id"), ("scored", "search", "eval_id"),
                                             ("archs", "archs", "net_id"), ("samples", "samples", None),
                                             ("seed", "seed", "net_id")])
def test_every_output_reads_back(outputs, kind, fmt, id_col):
    space = build_space("mbv3")
    path = outputs[kind]
    lst = read_arch_list(path, space)
    df = pd.read_csv(path)
    text_col = "net_str" if kind == "seed" else "arch"
    assert lst.format == fmt and len(lst) == len(df) > 0
    assert [a.text for a in lst.archs] == list(df[text_col])
    assert [a.resolution for a in lst.archs] == list(df["resolution"])
    assert lst.ids == (list(df[id_col]) if id_col else list(range(len(df))))
    assert lst.lines == list(range(2, len(df) + 2))
    assert read_archs(path, space) == lst.archs


def test_evaluate_scores_a_search_front(outputs, tmp_path):
    """The search's front.csv, refused before, is scored by task=evaluate (same archs, same order)."""
    df = execute(compose([*NOTE10, "task=evaluate", f"task.archs_csv={outputs['front']}"], tmp_path / "o"),
                 run_dir=tmp_path / "run")
    front = pd.read_csv(outputs["front"])
    assert list(df["arch"]) == list(front["arch"]) and list(df["resolution"]) == list(front["resolution"])
    # the metrics are the search's own values for those archs (same metric set, same device)
    assert np.allclose(df["latency"], front["latency"]) and np.allclose(df["accuracy"], front["accuracy"])


def _write(path, text):
    path.write_text(text)
    return path


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_malformed_lists_fail_in_one_line_naming_file_and_line(outputs, tmp_path):
    space = build_space("mbv3")
    good = pd.read_csv(outputs["archs"])
    arch, res = good["arch"][0], int(good["resolution"][0])
    cases = {
        "empty.csv": ("", "empty file"),
        "blank.csv": ("\n\n", "empty file"),
        "header_only.csv": ("net_id,arch,resolution,latency\n", "no arch rows below the header"),
        "unknown.csv": ("id,architecture,res\n0,x,224\n", ":1: not an arch list"),
        "fields.csv": (f"net_id,arch,resolution\n0,{arch},{res},9\n", ":2: expected 3 fields, found 4"),
        "bad_arch.csv": (f"net_id,arch,resolution\n0,{arch},{res}\n1,mbconv3_e9_k7|x,{res}\n", ":3: mbv3"),
        "bad_res.csv": (f"eval_id,iteration,origin,arch,resolution\n0,0,init,{arch},225\n",
                        ":2: resolution 225 is not in space mbv3"),
        "res_text.csv": (f"net_id,net_str,device,resolution,lat unit,end-to-end lat\n0,{arch},npu,big,ms,1\n",
                         ":2: mbv3: resolution 'big' is not an integer"),
        # the seed's reader splits every line into exactly six fields: no fewer, no more
        "seed_3.csv": (f"net_id,net_str,resolution\n0,{arch},{res}\n", ":1: 3 columns; the seed's latency CSV has exactly 6"),
        "seed_7.csv": (f"net_id,net_str,device,resolution,lat unit,end-to-end lat,onnx_file\n0,{arch},x,{res},ms,,a.onnx\n",
                       ":1: 7 columns"),
        "seed_row.csv": (f"a,b,c,d,e,f\n0,{arch},x,{res},ms\n", ":2: expected 6 fields, found 5"),
        "dup_id.csv": (f"net_id,arch,resolution\n4,{arch},{res}\n4,{arch},{res}\n", ":3: duplicate net_id 4"),
        "bad_id.csv": (f"net_id,arch,resolution\nx,{arch},{res}\n", ":2: net_id 'x' is not an integer"),
    }
    for name, (text, expect) in cases.items():
        path = _write(tmp_path / name, text)
        with pytest.raises(UserError) as exc:
            read_archs(path, space)
        msg = _one_line(exc)
        assert msg.startswith(str(path)) and expect in msg, (name, msg)
    for name, data in (("binary.csv", b"\x00\x01\x02\xff" * 50), ("nul.csv", b"net_id,arch\x00,resolution\n")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as exc:
            read_archs(tmp_path / name, space)
        assert _one_line(exc).startswith(f"{tmp_path / name}:")
    with pytest.raises(UserError) as exc:
        read_archs(tmp_path / "nope.csv", space)
    assert "not found" in _one_line(exc)
    # a list of another space: the arch text is refused with the line
    pn = build_space("pn")
    with pytest.raises(UserError) as exc:
        read_archs(outputs["front"], pn)
    assert f"{outputs['front']}:2: pn" in _one_line(exc)


def test_a_spreadsheet_bom_and_blank_lines_are_fine(outputs, tmp_path):
    space = build_space("mbv3")
    text = outputs["archs"].read_text()
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff".encode() + text.replace("\n", "\n\n", 1).encode())
    assert read_archs(path, space) == read_archs(outputs["archs"], space)


def test_cli_evaluate_of_a_bad_list_is_one_error_line(tmp_path):
    from conftest import run_cli
    bad = _write(tmp_path / "bad.csv", "net_id,arch,resolution\n")
    p = run_cli(["task=evaluate", f"task.archs_csv={bad}", f"paths.output_root={tmp_path / 'out'}", "tracking=none"],
                cwd=tmp_path)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and str(bad) in errors[0] and "no arch rows" in errors[0]
    assert "Traceback" not in p.stderr
