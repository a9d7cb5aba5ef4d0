"""The bad-input battery: what a new user gets wrong, and what goes wrong around them.

One table of cases across configs, block specs, CSVs, insight files, checkpoints,
assets, the file system, dead tracking servers, kills, interrupts and concurrent runs.
Every case runs the real command line (`python run.py ...` semantics) from a fresh
folder with `paths.output_root` there, and checks what the user sees and what is left:

- `error`: exit code 2, exactly one `error:` line (holding the case's needle), no
  traceback, and nothing left behind: no new file (so no run folder, no MLflow store
  or run), no input file changed;
- `recovered`: a damaged state is repaired (or skipped) and the run succeeds, checked
  by the case's own `verify`;
- `ok`: the input is fine after all (e.g. a filter the user asked for), also verified.

Most cases run the CLI in this process (Hydra's real `main`, fresh each time): a
subprocess costs 3-5 s of imports each. Kills, interrupts and races need processes of
their own and are marked `slow`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import REPO

STAMP = re.compile(r"\d{4}-\d{2}-\d{2}")  # run folder names carry the date
TINY = ["task.num_archs=2", "task.all=false", "task.blocks=[[0,0,3,3]]"]
SEARCH = ["task=search", "search.budget=30", "search.init_size=20", "search.budget_per_iter=10",
          "search.plot=false"]


# ===================================================================== running the CLI
@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]


def cli(args: list[str], cwd: Path, env: dict | None = None) -> Result:
    """The command line, in this process: Hydra's real entry point, stdout/stderr captured,
    exit code from SystemExit (an escaping exception counts as a traceback, exit 1)."""
    from hydra.core.global_hydra import GlobalHydra

    from blockprof import cli as cli_mod

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd, old_env = sys.argv, os.getcwd(), dict(os.environ)
    os.environ.update(env or {})
    sys.argv = ["run.py", *args]
    os.chdir(cwd)
    GlobalHydra.instance().clear()
    handlers = list(logging.getLogger().handlers)
    rc = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli_mod.main()
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - what a user would see as a traceback
                err.write(traceback.format_exc())
                rc = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        GlobalHydra.instance().clear()
        _end_mlflow_runs()
        # Hydra's job logging adds a run.log handler to the root logger and, in a process of
        # its own, never needs to take it away; here the next case must not write to it
        for h in list(logging.getLogger().handlers):
            if h not in handlers:
                logging.getLogger().removeHandler(h)
                h.close()
        for name in ("blockprof.run", "blockprof.mlflow"):  # they write to the run's file handlers
            logging.getLogger(name).handlers = []
    return Result(rc, out.getvalue(), err.getvalue())


def cli_proc(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> Result:
    r = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    return Result(r.returncode, r.stdout, r.stderr)


def _end_mlflow_runs() -> None:
    try:
        import mlflow
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
    except Exception:
        pass


# ===================================================================== what is left behind
def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256); folders as "dir"."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            snap[rel + "/"] = "dir"
        elif p.is_file():
            snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def mlflow_runs(root: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in the local store under `root` (none without a store)."""
    db = root / "mlflow.db"
    if not db.is_file():
        return []
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            return list(con.execute("select run_uuid, status from runs"))
        except sqlite3.Error:
            return []


def assert_nothing_left(before: dict[str, str], after: dict[str, str], allow: Callable[[str], bool]) -> None:
    changed = sorted(k for k in before if k in after and before[k] != after[k] and not allow(k))
    removed = sorted(k for k in before if k not in after and not allow(k))
    new_files = sorted(k for k in after if k not in before and after[k] != "dir" and not allow(k))
    new_runs = sorted(k for k in after if k not in before and after[k] == "dir" and STAMP.search(k) and not allow(k))
    assert not changed, f"input files changed: {changed}"
    assert not removed, f"files removed: {removed}"
    assert not new_files, f"files left behind: {new_files[:12]}"
    assert not new_runs, f"run folders left behind: {new_runs}"


# ===================================================================== shared inputs
@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Inputs the cases damage copies of: a latency CSV, a trained predictor, a search run
    with a checkpoint, a profile run."""
    from blockprof.core.latency_csv import write_latency_csv
    from blockprof.core.registry import build_space

    d = tmp_path_factory.mktemp("kit")
    space = build_space("mbv3")
    archs = space.sample(np.random.default_rng(1), 60)
    lat = [1.0 + 0.01 * sum(len(u) for u in a.units) + a.resolution / 1000 for a in archs]
    write_latency_csv(d / "npu.csv", [(i, a, "npu", v) for i, (a, v) in enumerate(zip(archs, lat))])
    write_latency_csv(d / "gpu.csv", [(i, a, "gpu", v) for i, (a, v) in enumerate(zip(archs, lat))])
    write_latency_csv(d / "mixed.csv", [(i, a, "npu" if i % 2 else "gpu", v)
                                        for i, (a, v) in enumerate(zip(archs, lat))])
    env = _env(d)
    for dev in ("npu", "gpu"):
        r = cli(["task=train_predictor", "space=mbv3", f"device={dev}", f"task.csv={d / (dev + '.csv')}",
                 "task.model=linear", f"task.checkpoint={d / (dev + '_linear.pt')}", "tracking=none",
                 "task.allow_small_test=true",
                 f"paths.output_root={d / 'out'}"], d, env)
        assert r.rc == 0, r.err[-3000:]
    r = cli([*SEARCH, "tracking=none", f"paths.output_root={d / 'out'}", f"hydra.run.dir={d / 'search_run'}"],
            d, env)
    assert r.rc == 0, r.err[-3000:]
    assert (d / "search_run" / "checkpoint" / "state.json").is_file()
    r = cli(["task.num_archs=3", "tracking=none", f"paths.output_root={d / 'out'}",
             f"hydra.run.dir={d / 'profile_run'}"], d, env)
    assert r.rc == 0, r.err[-3000:]
    assert (d / "profile_run" / "summary.csv").is_file()
    r = cli(["task.num_archs=3", "task.all=false", "task.blocks=[[0,0,3,3]]", "tracking=none",
             f"paths.output_root={d / 'out'}", f"hydra.run.dir={d / 'profile_1slot'}"], d, env)
    assert r.rc == 0, r.err[-3000:]
    return d


def _env(tmp: Path) -> dict:
    seed_data = tmp / "no_seed_data"
    seed_data.mkdir(exist_ok=True)
    # no network: the seed's CSVs come from an empty local folder, downloads hit a closed port
    return {"BLOCKPROF_SEED_DATA": str(seed_data), "BLOCKPROF_CACHE": str(tmp / "cache"),
            "https_proxy": f"http://127.0.0.1:{closed_port()}", "HTTPS_PROXY": f"http://127.0.0.1:{closed_port()}",
            "MLFLOW_TRACKING_URI": ""}


def closed_port() -> int:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ===================================================================== the table
@dataclass
class Case:
    id: str
    category: str
    args: list[str]
    needle: str = ""                      # `error`: a substring of the one error line
    expect: str = "error"                 # error | recovered | ok
    setup: Callable | None = None         # (tmp, kit) -> {name: value} for {name} in args
    verify: Callable | None = None        # (tmp, result, values) for recovered / ok
    env: dict = field(default_factory=dict)
    allow: Callable[[str], bool] = lambda rel: False   # paths that may change (e.g. a live run's)
    xfail: str | None = None
    slow: bool = False
    proc: bool = False                    # needs its own process (signals, races)
    runner: Callable | None = None        # custom driver instead of one CLI call: (tmp, kit, values) -> Result


def write(name: str, data: str | bytes):
    def setup(tmp, kit):
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        return {"file": p}
    return setup


def copy_kit(name: str, damage: Callable[[Path], None] | None = None, dest: str | None = None):
    def setup(tmp, kit):
        src, dst = kit / name, tmp / (dest or name)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        if damage:
            damage(dst)
        return {"file": dst, "kit": kit}
    return setup


def _csv_rows(kit_csv: str, edit: Callable[[list[str]], list[str]]):
    def setup(tmp, kit):
        lines = (kit / kit_csv).read_text().splitlines()
        p = tmp / "lat.csv"
        p.write_text("\n".join(edit(lines)) + "\n")
        return {"file": p}
    return setup


def _row(i: int, col: int, value: str):
    def edit(lines):
        cells = lines[i].split(",")
        cells[col] = value
        lines[i] = ",".join(cells)
        return lines
    return edit


TRAIN = ["task=train_predictor", "space=mbv3", "device=npu", "task.csv={file}", "task.model=linear",
         "task.allow_small_test=true", "task.checkpoint=ckpt/out.pt"]
EVAL_NPU = ["task=evaluate", "task.num_archs=2", "device=npu", "device.latency.checkpoint={file}",
            "device.latency.model=linear"]


def _insight(**override):
    """An insight profile for mbv3 in the schema, with `override` applied."""
    base = {"space": "mbv3", "unit_candidates": [["mbconv3_e3_k3", "mbconv3_e6_k7"]] * 5,
            "unit_mutate_probs": [0.5] * 5, "max_layers": [4] * 5, "min_layers": [2] * 5}
    base.update(override)
    return json.dumps(base)  # JSON is YAML


def _truncate(frac: float):
    return lambda p: p.write_bytes(p.read_bytes()[: int(p.stat().st_size * frac)])


def _garble(data: bytes = b"\x00\x9f\xff garbage \xfe" * 8):
    return lambda p: p.write_bytes(data)


def _state(edit: Callable[[dict], object]):
    def damage(run: Path):
        st = run / "checkpoint" / "state.json"
        st.write_text(json.dumps(edit(json.loads(st.read_text()))))
    return damage


def _full_lists(tmp, res):
    """A 1-slot profile says nothing to cut a unit's candidates to min_candidates=2 with: every
    unit keeps the full space's list, and the run says so."""
    import yaml
    from blockprof.core.registry import build_space
    from blockprof.search.insight import named_profile
    got = yaml.safe_load((tmp / "run" / "insight_space.yaml").read_text())
    full = named_profile(build_space("mbv3"), "full")
    assert [tuple(c) for c in got["unit_candidates"]] == list(full.candidates)
    assert "unit 0 has only 1 profiled block(s) (< min_candidates 2): keeping its full candidate list" in res.out + res.err


def _verify_profile_ok(tmp, res, values):
    folders = [p.parent for p in (tmp / "out").rglob("summary.csv")]
    assert folders, res.err[-2000:]


def _only_error(res):
    assert res.rc == 2 and len(res.error_lines) == 1, res.err[-2000:]


# ===================================================================== case helpers
def _torch_save(path: Path, obj) -> dict:
    import torch
    torch.save(obj, path)
    return {"file": path}


def _edit_ckpt(src: Path, dst: Path, **fields) -> dict:
    import torch
    ck = torch.load(src, map_location="cpu", weights_only=True)
    ck.update(fields)
    torch.save(ck, dst)
    return {"file": dst}


def _verify_filtered(ckpt: Path, rows: int) -> None:
    import torch
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert ck["data"]["rows"] == rows and ck["data"]["device"] == "npu" and ck["data"]["device_filter"] == "npu"


def _one_run(tmp: Path, status: str) -> None:
    runs = mlflow_runs(tmp / "out")
    assert [s for _, s in runs] == [status], runs


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _search_resumed(run: Path, kit: Path) -> None:
    ref = (kit / "search_run" / "front.csv")
    got = run / "front.csv"
    if ref.is_file():
        assert got.read_bytes() == ref.read_bytes()
    assert json.loads((run / "checkpoint" / "state.json").read_text())["frames"] >= 1


def _damage_chunk(run: Path, damage) -> None:
    chunks = sorted((run / "profile_chunks").glob("groups_*.csv"))
    damage(chunks[-1])
    for name in ("samples.csv", "summary.csv"):
        (run / name).unlink()


def _swap_arch(p: Path) -> None:
    import pandas as pd
    df = pd.read_csv(p)
    df.loc[0, "arch"], df.loc[1, "arch"] = df.loc[1, "arch"], df.loc[0, "arch"]
    df.to_csv(p, index=False)


def _profile_equal(run: Path, ref: Path, res: Result) -> None:
    assert "is damaged" in res.out + res.err, res.err[-2000:]  # a logged warning
    assert (run / "samples.csv").read_bytes() == (ref / "samples.csv").read_bytes()


def _memo_setup(data):
    def setup(tmp, kit):
        from blockprof.metrics.supernet_accuracy import MEMO_COLUMNS
        p = tmp / "memo.csv"
        head = ",".join(MEMO_COLUMNS) + "\n"
        if data is None:
            p.write_text(head + MEMO_ROW + "garbage,row\n" + MEMO_ROW)
        elif data == "torn":
            p.write_text(head + MEMO_ROW + "fp,mbv3,224,arch2,7")
        else:
            (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        return {"file": p, "head": head}
    return setup


MEMO_ROW = "fp,mbv3,224,arch,76.5,93.1,100,64,cpu,1.0\n"


def _memo_read(tmp, kit, values):
    """What a supernet-accuracy run does with its memo when it starts (read it, repair a torn tail)."""
    from blockprof.common.errors import UserError
    from blockprof.metrics.supernet_accuracy import _drop_torn_tail, read_memo
    try:
        got = read_memo(values["file"])
    except UserError as e:
        return Result(2, "", f"error: {e}\n")
    _drop_torn_tail(values["file"])
    values["memo"] = got
    return Result(0, "", "")


def _memo_repaired(tmp, res, values):
    assert values["memo"] == {("fp", "arch", 224): (76.5, 93.1)}
    assert values["file"].read_text() == values["head"] + MEMO_ROW


def _cache_asset(tmp: Path, rel: str, data: bytes | None) -> dict:
    p = tmp / "cache" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    src = Path(os.environ["BLOCKPROF_ASSET_MIRROR"]) / rel
    p.write_bytes(data if data is not None else src.read_bytes()[: src.stat().st_size // 2])
    return {}


def _cache_dropped(tmp: Path, rel: str, res: Result) -> None:
    assert "fails its checksum" in res.out + res.err, res.err[-2000:]
    assert not (tmp / "cache" / rel).exists()  # replaced by the mirror's copy, used in place
    _verify_profile_ok(tmp, res, {})


def _mirror_with(tmp: Path, rel: str, data: bytes) -> dict:
    src = Path(os.environ["BLOCKPROF_ASSET_MIRROR"])
    dst = tmp / "mirror"
    shutil.copytree(src, dst)
    (dst / rel).write_bytes(data)
    return {"mirror": dst}


def _immutable(path: Path) -> dict:
    path.mkdir()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    return {"file": path, "_cleanup": lambda: subprocess.run(["chattr", "-i", str(path)])}


def _untracked_but_kept(tmp: Path, res: Result, t_max: float | None = None) -> None:
    warn = [ln for ln in res.err.splitlines() if ln.startswith("tracking:")]
    assert len(warn) == 1, res.err[-2000:]
    markers = list((tmp / "out").rglob("tracking.json"))
    assert len(markers) == 1
    m = json.loads(markers[0].read_text())
    assert m["tracked"] is False and m["status"] == "FINISHED"
    assert (markers[0].parent / "summary.csv").is_file()


class _SilentServer:
    """Accepts connections and never answers (a hung tracking server)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                return

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


# ---------------------------------------------------------------- kills, interrupts, races
KILL_PROFILE = ["task.num_archs=3", "task.chunk_archs=3"]  # one slot group per chunk: many chunks


def _default_sigint() -> None:
    # a suite started in the background (`nohup ... &`) ignores SIGINT, and a child inherits
    # that: Ctrl-C must reach the CLI as it does from a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
                            preexec_fn=_default_sigint)


def _wait_for(pred: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"finished before the fault: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("never reached the point of the fault")
        time.sleep(0.05)


def _interrupted_then_rerun(args: list[str], ready: Callable[[Path], bool], sig: int, expect_rc: int):
    """Start `args` into a fixed folder, send `sig` once `ready(folder)`, then rerun the same
    command; returns the rerun's Result after checking the interrupted one."""
    def runner(tmp, kit, values):
        run = tmp / "run"
        full = [*args, f"hydra.run.dir={run}", f"paths.output_root={tmp / 'out'}"]
        env = _env(tmp)
        p = _popen(full, tmp, env)
        _wait_for(lambda: ready(run), p)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        assert p.returncode == expect_rc, (p.returncode, err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        if sig == signal.SIGINT:
            assert [ln for ln in err.splitlines() if ln.startswith("error:")] == ["error: interrupted"], err[-2000:]
        values["first_runs"] = mlflow_runs(tmp / "out")
        values["run"] = run
        return cli_proc(full, tmp, env)
    return runner


def _chunks(n: int):
    return lambda run: len(list((run / "profile_chunks").glob("groups_*.csv"))) >= n


def _journal(frames: int):
    def ready(run):
        st = run / "checkpoint" / "state.json"
        try:
            return json.loads(st.read_text())["frames"] >= frames
        except (OSError, ValueError, KeyError):
            return False
    return ready


def _profile_resumed(tmp, res, values):
    kit = values["kit"]
    run = values["run"]
    assert "resumed:" in res.out, res.out[-2000:]
    assert (run / "samples.csv").read_bytes() == (kit / "profile_run" / "samples.csv").read_bytes()
    _resumed_mlflow_run(tmp, values)


def _resumed_mlflow_run(tmp, values):
    first = values["first_runs"]
    assert len(first) == 1 and first[0][1] in ("RUNNING", "KILLED"), first
    # the rerun continues the MLflow run of the folder: one run, finished
    assert mlflow_runs(tmp / "out") == [(first[0][0], "FINISHED")]


def _search_resumed_kill(tmp, res, values):
    kit, run = values["kit"], values["run"]
    assert (run / "front.csv").read_bytes() == (kit / "search_run" / "front.csv").read_bytes()
    _resumed_mlflow_run(tmp, values)


def _race_same_folder(tmp, kit, values):
    run = tmp / "out" / "runs" / "same"
    args = [*TINY, f"paths.output_root={tmp / 'out'}", f"hydra.run.dir={run}"]
    env = _env(tmp)
    procs = [_popen(args, tmp, env) for _ in range(2)]
    outs = [(p, *p.communicate(timeout=400)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in outs)
    assert codes == [0, 2], [e[-2000:] for _, _, e in outs]
    loser = next(e for p, _, e in outs if p.returncode == 2)
    values["run"] = run
    return _race_result(loser)


def _race_result(loser_err: str) -> Result:
    lines = [ln for ln in loser_err.splitlines() if ln.strip()]
    assert "Traceback" not in loser_err, loser_err[-3000:]
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1, loser_err[-2000:]
    assert any("in use by another live run" in ln for ln in lines), loser_err[-2000:]
    return Result(0, "", "")


def _race_same_folder_ok(tmp, res, values):
    run = values["run"]
    m = json.loads((run / "tracking.json").read_text())
    assert m["status"] == "FINISHED" and m["tracked"] is True
    assert (run / "samples.csv").is_file()
    assert mlflow_runs(tmp / "out") == [(m["run_id"], "FINISHED")]


def _race_two_runs(tmp, kit, values):
    args = [*TINY, f"paths.output_root={tmp / 'out'}"]
    env = _env(tmp)
    procs = [_popen(args, tmp, env) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    return Result(0, "", "")


def _two_runs_ok(tmp, res, values):
    markers = sorted((tmp / "out").rglob("tracking.json"))
    assert len(markers) == 2, markers
    assert all(json.loads(m.read_text())["tracked"] for m in markers)
    assert sorted(s for _, s in mlflow_runs(tmp / "out")) == ["FINISHED", "FINISHED"]
    third = cli([*TINY, f"paths.output_root={tmp / 'out'}"], tmp, _env(tmp))
    assert third.rc == 0, third.err[-2000:]
    assert len(mlflow_runs(tmp / "out")) == 3


def _held_folder(tmp, kit, values):
    run = tmp / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from blockprof.infra.tracking import claim_run_dir
        claim_run_dir({str(run)!r}, "profile")
        print("held", flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp)
        res = cli([*TINY, f"paths.output_root={tmp / 'out'}", f"hydra.run.dir={run}"], tmp, _env(tmp))
        after = snapshot(tmp)
    finally:
        holder.kill()
        holder.wait()
    _only_error(res)
    assert "in use by another live run" in res.error_lines[0] and "Traceback" not in res.err
    assert_nothing_left(before, after, lambda rel: rel.startswith("run/.hydra") or rel == "run/run.log")
    assert mlflow_runs(tmp / "out") == []
    return Result(0, "", "")


# ---------------------------------------------------------------- found before the run opens
SEARCH_MIN = ["task=search", "search.budget=30", "search.plot=false"]  # every strategy has these keys


def _pn_csv_and(ckpt_name: str | None, damage: Callable[[Path], None] | None = None):
    """A ProxylessNAS latency CSV (and a copy of a kit checkpoint, maybe damaged)."""
    def setup(tmp, kit):
        from blockprof.core.latency_csv import write_latency_csv
        from blockprof.core.registry import build_space
        archs = build_space("pn").sample(np.random.default_rng(2), 30)
        csv = write_latency_csv(tmp / "pn.csv", [(i, a, "npu", 1.0 + 0.01 * i) for i, a in enumerate(archs)])
        out = {"file": csv}
        if ckpt_name:
            shutil.copy(kit / ckpt_name, tmp / "init.pt")
            if damage:
                damage(tmp / "init.pt")
            out["ckpt"] = tmp / "init.pt"
        return out
    return setup


def _kit_csv_and_ckpt(damage: Callable[[Path], None] | None):
    def setup(tmp, kit):
        shutil.copy(kit / "npu.csv", tmp / "lat.csv")
        shutil.copy(kit / "npu_linear.pt", tmp / "init.pt")
        if damage:
            damage(tmp / "init.pt")
        return {"file": tmp / "lat.csv", "ckpt": tmp / "init.pt"}
    return setup


def _empty_dirs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and not any(p.iterdir()))


def _api_refused(tmp, kit, values):
    """`blockprof.run(compose([...]))` refused by a task's own check: no folder left."""
    import blockprof
    from blockprof.common.errors import UserError
    before = _empty_dirs(tmp)
    try:
        blockprof.run(blockprof.compose(["task.num_archs=0", "tracking=none", f"paths.output_root={tmp / 'out'}"]))
    except UserError as e:
        res = Result(2, "", f"error: {e}\n")
    else:
        res = Result(0, "", "")
    runs = tmp / "out" / "runs"
    assert not runs.exists() or not any(runs.rglob("*")), sorted(map(str, runs.rglob("*")))
    assert _empty_dirs(tmp) == before or _empty_dirs(tmp) == sorted({*before, "out"})
    return res


def _mirror_missing_table(tmp, kit, values):
    """A mirror that lacks one lookup table: the download fails (no network) and the cache
    folder it would have gone to is not left behind, empty."""
    mirror = tmp / "mirror"
    shutil.copytree(Path(os.environ["BLOCKPROF_ASSET_MIRROR"]), mirror)
    (mirror / "ofa" / "note10" / "224_lookup_table.yaml").unlink()
    env = {**_env(tmp), "BLOCKPROF_ASSET_MIRROR": str(mirror)}
    res = cli([*TINY, f"paths.output_root={tmp / 'out'}"], tmp, env)
    cache = tmp / "cache"
    assert not cache.exists() or not _empty_dirs(cache), _empty_dirs(cache)
    return res


def _export_held(tmp, kit, values):
    """Another export holds the task.out_dir (its lock, taken by the real export code in a
    process of its own): this one is refused, and writes nothing there."""
    out = tmp / "exports"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from blockprof.app.tasks.export import _lock_out_dir
        _lock_out_dir(Path({str(out)!r}))
        print("held", flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp)
        res = cli(["task=export", "task.num_archs=1", f"task.out_dir={out}", f"paths.output_root={tmp / 'out'}"],
                  tmp, _env(tmp))
        after = snapshot(tmp)
    finally:
        holder.kill()
        holder.wait()
    assert_nothing_left(before, after, lambda rel: False)
    assert sorted(p.name for p in out.iterdir()) == [".export.lock"]
    return res


CASES: list[Case] = [
    # ------------------------------------------------------------------ configs
    Case("space-unknown", "config", ["space=mbv3x"], "unknown space 'mbv3x'"),
    Case("device-unknown", "config", ["device=iphone"], "unknown device 'iphone'"),
    Case("task-unknown", "config", ["task=train"], "unknown task 'train'"),
    Case("metric-unknown", "config", ["metric=fast"], "unknown metric 'fast'"),
    Case("search-unknown", "config", ["task=search", "search=ga"], "unknown search 'ga'"),
    Case("tracking-unknown", "config", ["tracking=wandb"], "unknown tracking 'wandb'"),
    Case("num-archs-float", "config", ["task.num_archs=2.9"], "task.num_archs"),
    Case("num-archs-text", "config", ["task.num_archs=many"], "task.num_archs"),
    Case("num-archs-zero", "config", ["task.num_archs=0"], "num_archs must be >= 1"),
    Case("num-archs-negative", "config", ["task.num_archs=-5"], "num_archs must be >= 1"),
    Case("key-typo", "config", ["task.num_archz=5"], "num_archz"),
    Case("key-typo-plus", "config", ["+task.num_archz=5"], "task.num_archz"),
    Case("key-typo-top", "config", ["sead=3"], "sead"),
    Case("seed-negative", "config", ["seed=-1"], "seed must be a non-negative integer"),
    Case("seed-float", "config", ["seed=1.5"], "seed"),
    Case("seed-text", "config", ["seed=abc"], "seed"),
    Case("all-not-bool", "config", ["task.all=maybe"], "task.all"),
    Case("backend-typo", "config", ["tracking.backend=mlfow"], "tracking.backend"),
    Case("experiment-too-long", "config", [f"tracking.experiment={'x' * 1000}"], "tracking.experiment"),
    Case("experiment-empty", "config", ["tracking.experiment=''"], "tracking.experiment"),
    Case("server-without-uri", "config", ["tracking=server"], "tracking.uri"),
    Case("metric-names-unknown", "config", ["metric.names=[accuracy,flops]"], "unknown metric(s) ['flops']"),
    Case("metric-names-empty", "config", ["metric.names=[]"], "metric"),
    Case("shard-out-of-range", "config", ["task.shard_index=3", "task.num_shards=2"], "task.shard_index"),
    Case("shards-zero", "config", ["task.num_shards=0"], "num_shards"),
    Case("override-syntax", "config", ["task.blocks=[[0,0"], "cannot parse override"),
    Case("override-no-key", "config", ["=5"], "cannot parse override"),
    Case("resnet-on-note10", "config", ["space=resnet50", "device=note10", "metric=efficiency"],
         "no latency lookup table for space resnet50"),
    Case("w10-no-predictor", "config", ["space=mbv3_w10", "metric=no_latency"],
         "no public accuracy predictor for space mbv3_w10"),
    Case("nothing-to-profile", "config", ["task.all=false", "task.blocks=[]"], "nothing to profile"),
    Case("search-budget-zero", "config", [*SEARCH, "search.budget=0"], "budget"),
    Case("search-insight-unknown", "config", [*SEARCH, "search.insight=tpu"], "unknown search.insight 'tpu'"),
    Case("from-profile-no-run", "config", [*SEARCH, "search.insight=from_profile"], "needs search.profile_run"),
    Case("npu-no-data", "config", ["device=npu", "task.num_archs=2"], "no latency data for space mbv3 on device npu"),
    Case("archs-csv-missing", "config", ["task=evaluate", "task.archs_csv=nope.csv"], "nope.csv"),
    Case("from-profile-min-candidates-0", "config",
         [*SEARCH, "search.insight=from_profile", "search.profile_run={file}", "search.from_profile.min_candidates=0"],
         "min_candidates >= 1", setup=lambda tmp, kit: {"file": kit / "profile_run"}),
    # ------------------------------------------------------------------ block specs
    *[Case(f"blocks-{name}", "blocks", ["task.all=false", f"task.blocks={spec}", "task.num_archs=2"], needle)
      for name, spec, needle in [
          ("scalar", "5", "task.blocks"),
          ("string", "abc", "task.blocks"),
          ("unit-range", "[[9,0,3,3]]", "unit 9 out of range"),
          ("unit-negative", "[[-1,0,3,3]]", "unit -1"),
          ("layer-range", "[[0,9,3,3]]", "layer 9"),
          ("kernel", "[[0,0,4,3]]", "kernel"),
          ("expand", "[[0,0,3,5]]", "expand"),
          ("resolution", "[[0,0,3,3,999]]", "999"),
          ("resolution-odd", "[[1,0,7,6,223]]", "223"),
          ("short", "[[0,0,3]]", "[0, 0, 3]"),
          ("long", "[[0,0,3,3,224,1]]", "[0, 0, 3, 3, 224, 1]"),
          ("text-unit", "[[a,0,3,3]]", "'a'"),
          ("float-unit", "[[0.5,0,3,3]]", "0.5"),
          ("bool-unit", "[[true,0,3,3]]", "True"),
          ("empty-spec", "[[]]", "[]"),
          ("same-slot-twice", "[[[0,0,3,3],[0,0,5,4]]]", "twice"),
          ("mapping", "{a:1}", "task.blocks"),
      ]],
    Case("blocks-resnet-format", "blocks", ["space=resnet50", "device=cpu", "metric=no_latency", "task.all=false",
                                            "task.blocks=[[0,0,3,3]]", "task.num_archs=2"], "bad block spec [0, 0, 3, 3]"),
    Case("resolutions-bad", "blocks", ["task.resolutions=[999]", "task.num_archs=2"], "999"),
    Case("resolutions-text", "blocks", ["task.resolutions=[big]", "task.num_archs=2"], "task.resolutions"),
    # ------------------------------------------------------------------ CSVs (train_predictor, evaluate)
    Case("csv-missing", "csv", [*TRAIN[:3], "task.csv=none.csv", *TRAIN[4:]], "none.csv"),
    Case("csv-empty", "csv", TRAIN, "empty file", setup=write("lat.csv", "")),
    Case("csv-binary", "csv", TRAIN, "not a text CSV", setup=write("lat.csv", b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20)),
    Case("csv-utf16", "csv", TRAIN, "lat.csv",
         setup=write("lat.csv", "net_id,net_str,device,resolution,lat unit,end-to-end lat\n".encode("utf-16"))),
    Case("csv-nul", "csv", TRAIN, "lat.csv", setup=_csv_rows("npu.csv", lambda ls: ls[:3] + ["1\x00,2"] + ls[3:])),
    # quoted back in the message: shown escaped, never sent raw to the terminal
    Case("csv-nul-in-arch", "csv", TRAIN, "mbcon\\x00\\x1b[31mv3_e3_k5",
         setup=_csv_rows("npu.csv", _row(4, 1, "mbcon\x00\x1b[31mv3_e3_k5"))),
    Case("csv-header-only", "csv", TRAIN, "at least 3", setup=_csv_rows("npu.csv", lambda ls: ls[:1])),
    Case("csv-two-rows", "csv", TRAIN, "at least 3", setup=_csv_rows("npu.csv", lambda ls: ls[:3])),
    # the seed reads six fields by position, whatever the header's names (other names: a warning, not a refusal)
    Case("csv-seventh-column", "csv", TRAIN, "7 columns", setup=_csv_rows("npu.csv", lambda ls: [ls[0] + ",onnx_file"] + ls[1:])),
    Case("csv-no-latency-column", "csv", TRAIN, "5 columns",
         setup=_csv_rows("npu.csv", lambda ls: [",".join(ln.split(",")[:5]) for ln in ls])),
    Case("csv-short-row", "csv", TRAIN, "expected 6 fields", setup=_csv_rows("npu.csv", lambda ls: ls[:5] + ["7,x"] + ls[5:])),
    Case("csv-net-id-text", "csv", TRAIN, "is not an integer", setup=_csv_rows("npu.csv", _row(4, 0, "four"))),
    Case("csv-net-id-duplicate", "csv", TRAIN, "duplicate net_id", setup=_csv_rows("npu.csv", _row(4, 0, "1"))),
    Case("csv-bad-arch", "csv", TRAIN, "lat.csv:5", setup=_csv_rows("npu.csv", _row(4, 1, "mbconv9_e9_k9"))),
    Case("csv-other-space-arch", "csv", [*TRAIN[:1], "space=pn", *TRAIN[2:]], "lat.csv:2", setup=copy_kit("npu.csv", dest="lat.csv")),
    Case("csv-bad-resolution", "csv", TRAIN, "lat.csv:5", setup=_csv_rows("npu.csv", _row(4, 3, "225"))),
    Case("csv-bad-unit", "csv", TRAIN, "latency unit 'min'", setup=_csv_rows("npu.csv", _row(4, 4, "min"))),
    Case("csv-latency-text", "csv", TRAIN, "is not a number", setup=_csv_rows("npu.csv", _row(4, 5, "fast"))),
    Case("csv-latency-negative", "csv", TRAIN, "must be a positive number", setup=_csv_rows("npu.csv", _row(4, 5, "-3"))),
    Case("csv-latency-zero", "csv", TRAIN, "must be a positive number", setup=_csv_rows("npu.csv", _row(4, 5, "0"))),
    Case("csv-latency-nan", "csv", TRAIN, "must be a positive number", setup=_csv_rows("npu.csv", _row(4, 5, "nan"))),
    Case("csv-latency-inf", "csv", TRAIN, "must be a positive number", setup=_csv_rows("npu.csv", _row(4, 5, "inf"))),
    Case("csv-mixed-devices", "csv", TRAIN, "rows of several devices", setup=copy_kit("mixed.csv", dest="lat.csv")),
    Case("csv-other-device", "csv", TRAIN, "for device 'gpu', not npu", setup=copy_kit("gpu.csv", dest="lat.csv")),
    Case("csv-filter-no-rows", "csv", [*TRAIN, "task.device_filter=tpu"], "no rows for device 'tpu'",
         setup=copy_kit("mixed.csv", dest="lat.csv")),
    Case("csv-filter-mixed", "csv", [*TRAIN, "task.device_filter=npu", "tracking=none"], expect="ok",
         setup=copy_kit("mixed.csv", dest="lat.csv"),
         verify=lambda tmp, res, v: _verify_filtered(tmp / "ckpt" / "out.pt", 30)),
    Case("csv-checkpoint-unwritable", "csv", [*TRAIN[:-1], "task.checkpoint={file}/sub/out.pt"], "{file}",
         setup=write("a_file", "x")),
    Case("archs-csv-header-only", "csv", ["task=evaluate", "task.archs_csv={file}"], "lat.csv",
         setup=_csv_rows("npu.csv", lambda ls: ls[:1])),
    Case("archs-csv-binary", "csv", ["task=evaluate", "task.archs_csv={file}"], "lat.csv",
         setup=write("lat.csv", b"\x00\x01\x02\xff" * 50)),
    Case("archs-csv-no-arch-column", "csv", ["task=evaluate", "task.archs_csv={file}"], "lat.csv",
         setup=write("lat.csv", "a,b\n1,2\n")),
    # ------------------------------------------------------------------ insight files
    *[Case(f"insight-{name}", "insight", [*SEARCH, "search.insight={file}"], needle, setup=write("ins.yaml", data))
      for name, data, needle in [
          ("invalid-yaml", "unit_candidates: [[a, b]\n  - : :", "not valid YAML"),
          ("binary", b"\x00\xff\xfe\x01" * 30, "ins.yaml"),
          ("empty", "", "expected a mapping"),
          ("list", "- 1\n- 2\n", "expected a mapping"),
          ("units", _insight(max_layers=[4] * 4), "max_layers has 4 units"),
          ("unknown-block", _insight(unit_candidates=[["mbconv9_e1_k1"]] * 5), "mbconv9_e1_k1"),
          ("duplicate-block", _insight(unit_candidates=[["mbconv3_e3_k3", "mbconv3_e3_k3"]] * 5), "twice"),
          ("min-over-max", _insight(min_layers=[4] * 5, max_layers=[3] * 5), "min_layers 4 > max_layers 3"),
          ("layers-outside", _insight(max_layers=[9] * 5), "allows 2..9 layers"),
          ("prob-over-1", _insight(unit_mutate_probs=[1.5] * 5), "1.5"),
          ("probs-zero", _insight(unit_mutate_probs=[0] * 5), "every unit mutation probability is 0"),
          ("unknown-key", _insight(mutation=1), "unknown key(s) ['mutation']"),
          ("other-space", _insight(space="pn"), "for space 'pn'"),
          ("width-indices", _insight(unit_width_indices=[[0]] * 5), "unit_width_indices"),
          ("empty-candidates", _insight(unit_candidates=[[]] * 5), "unit 0 has no candidates"),
          ("missing-key", json.dumps({"unit_candidates": [["mbconv3_e3_k3"]] * 5}), "missing"),
          ("layers-text", _insight(min_layers=["two"] * 5), "is not an integer"),
      ]],
    Case("from-profile-few-blocks", "insight",
         [*SEARCH, "tracking=none", "search.insight=from_profile", "search.profile_run={file}", "hydra.run.dir=run"],
         expect="ok", setup=lambda tmp, kit: {"file": kit / "profile_1slot"}, verify=lambda tmp, res, v: _full_lists(tmp, res)),
    Case("insight-file-missing", "insight", [*SEARCH, "search.insight=nope/ins.yaml"], "does not exist"),
    Case("from-profile-missing-folder", "insight", [*SEARCH, "search.insight=from_profile", "search.profile_run=gone"],
         "search.profile_run 'gone'"),
    Case("from-profile-no-summary", "insight", [*SEARCH, "search.insight=from_profile", "search.profile_run={file}"],
         "has no summary.csv", setup=lambda tmp, kit: (tmp / "empty_run").mkdir() or {"file": tmp / "empty_run"}),
    Case("from-profile-garbage-summary", "insight", [*SEARCH, "search.insight=from_profile", "search.profile_run={file}"],
         "summary.csv", setup=write("summary.csv", b"\x00\xff\x00" * 40)),
    Case("from-profile-columns", "insight", [*SEARCH, "search.insight=from_profile", "search.profile_run={file}"],
         "lacks column(s)", setup=write("summary.csv", "unit,layer,block\n0,0,x\n")),
    Case("from-profile-unknown-run-id", "insight",
         [*SEARCH, "search.insight=from_profile", "search.profile_run=0123456789abcdef0123456789abcdef"],
         "0123456789abcdef0123456789abcdef"),
    # ------------------------------------------------------------------ checkpoints
    Case("predictor-empty", "checkpoint", EVAL_NPU, "cannot read latency predictor checkpoint", setup=write("p.pt", b"")),
    Case("predictor-garbage", "checkpoint", EVAL_NPU, "cannot read latency predictor checkpoint",
         setup=write("p.pt", b"\x00\x01garbage" * 30)),
    Case("predictor-truncated", "checkpoint", EVAL_NPU, "cannot read latency predictor checkpoint",
         setup=copy_kit("npu_linear.pt", _truncate(0.5), dest="p.pt")),
    Case("predictor-not-ours", "checkpoint", EVAL_NPU, "is not a blockprof latency predictor checkpoint",
         setup=lambda tmp, kit: _torch_save(tmp / "p.pt", {"weights": [1, 2]})),
    Case("predictor-format-version", "checkpoint", EVAL_NPU, "has checkpoint format 99",
         setup=lambda tmp, kit: _edit_ckpt(kit / "npu_linear.pt", tmp / "p.pt", format_version=99)),
    Case("predictor-other-space", "checkpoint", [*EVAL_NPU, "space=pn"], "was trained for space mbv3",
         setup=copy_kit("npu_linear.pt", dest="p.pt")),
    Case("predictor-other-device", "checkpoint", EVAL_NPU, "predicts latency on device gpu, not npu",
         setup=copy_kit("gpu_linear.pt", dest="p.pt")),
    Case("predictor-other-model", "checkpoint", [*EVAL_NPU[:-1], "device.latency.model=gnn"], "holds a 'linear' predictor",
         setup=copy_kit("npu_linear.pt", dest="p.pt")),
    Case("predictor-pickle", "checkpoint", EVAL_NPU, "cannot read latency predictor checkpoint",
         setup=lambda tmp, kit: _torch_save(tmp / "p.pt", {"format": "blockprof.latency_predictor", "x": Path("/")})),
    Case("predictor-ok", "checkpoint", EVAL_NPU, expect="ok", setup=copy_kit("npu_linear.pt", dest="p.pt"),
         verify=lambda tmp, res, v: _one_run(tmp, "FINISHED")),
    *[Case(f"search-ckpt-{name}", "checkpoint", [*SEARCH, "hydra.run.dir={file}"], needle,
           setup=copy_kit("search_run", damage, dest="run"))
      for name, damage, needle in [
          ("state-garbage", lambda r: _garble()(r / "checkpoint" / "state.json"), "damaged checkpoint"),
          ("state-truncated", lambda r: _truncate(0.5)(r / "checkpoint" / "state.json"), "damaged checkpoint"),
          ("state-list", _state(lambda s: [1, 2]), "damaged checkpoint"),
          ("state-format", _state(lambda s: {**s, "format": 1}), "damaged checkpoint"),
          ("state-lacks-keys", _state(lambda s: {"format": s["format"]}), "damaged checkpoint"),
          ("journal-short", lambda r: _truncate(0.5)(r / "checkpoint" / "journal.jsonl"), "damaged checkpoint"),
          ("journal-garbage", lambda r: _garble()(r / "checkpoint" / "journal.jsonl"), "damaged checkpoint"),
          ("journal-missing", lambda r: (r / "checkpoint" / "journal.jsonl").unlink(), "damaged checkpoint"),
          ("other-search", _state(lambda s: {**s, "fingerprint": {**s["fingerprint"], "seed": 99}}),
           "holds a checkpoint of a different search"),
      ]],
    Case("search-ckpt-torn-tail", "checkpoint", [*SEARCH, "tracking=none", "hydra.run.dir={file}"], expect="recovered",
         setup=copy_kit("search_run", lambda r: _append(r / "checkpoint" / "journal.jsonl", b'{"archs": [1, 2'), dest="run"),
         verify=lambda tmp, res, v: _search_resumed(v["file"], v["kit"])),
    Case("profile-chunk-truncated", "checkpoint", ["task.num_archs=3", "tracking=none", "hydra.run.dir={file}"],
         expect="recovered", setup=copy_kit("profile_run", lambda r: _damage_chunk(r, _truncate(0.6)), dest="run"),
         verify=lambda tmp, res, v: _profile_equal(v["file"], v["kit"] / "profile_run", res)),
    Case("profile-chunk-binary", "checkpoint", ["task.num_archs=3", "tracking=none", "hydra.run.dir={file}"],
         expect="recovered", setup=copy_kit("profile_run", lambda r: _damage_chunk(r, _garble()), dest="run"),
         verify=lambda tmp, res, v: _profile_equal(v["file"], v["kit"] / "profile_run", res)),
    Case("profile-chunk-edited", "checkpoint", ["task.num_archs=3", "tracking=none", "hydra.run.dir={file}"],
         expect="recovered", setup=copy_kit("profile_run", lambda r: _damage_chunk(r, _swap_arch), dest="run"),
         verify=lambda tmp, res, v: _profile_equal(v["file"], v["kit"] / "profile_run", res)),
    Case("profile-settings-damaged", "checkpoint", ["task.num_archs=3", "tracking=none", "hydra.run.dir={file}"],
         "settings.json is damaged", setup=copy_kit("profile_run", lambda r: _truncate(0.5)(
             r / "profile_chunks" / "settings.json"), dest="run"), allow=lambda rel: rel.startswith("run/.hydra")),
    Case("profile-other-settings", "checkpoint", ["task.num_archs=4", "tracking=none", "hydra.run.dir={file}"],
         "holds a profile with other settings", setup=copy_kit("profile_run", dest="run"),
         allow=lambda rel: rel.startswith("run/.hydra")),
    *[Case(f"memo-{name}", "checkpoint", [], needle, expect=expect, setup=_memo_setup(data), runner=_memo_read,
           verify=_memo_repaired if expect == "recovered" else None)
      for name, data, needle, expect in [
          ("binary", b"\x00\xff\xfe\xfd" * 40, "not a text accuracy memo", "error"),
          ("header", "a,b,c\n1,2,3\n", "not an accuracy memo", "error"),
          ("middle-row", None, "malformed accuracy memo row", "error"),
          ("torn-tail", "torn", "", "recovered"),
      ]],
    # ------------------------------------------------------------------ assets
    Case("asset-cache-corrupt", "asset", [*TINY, "tracking=none"], expect="recovered",
         setup=lambda tmp, kit: _cache_asset(tmp, "ofa/acc_predictor.pth", b"corrupt"),
         verify=lambda tmp, res, v: _cache_dropped(tmp, "ofa/acc_predictor.pth", res)),
    Case("asset-cache-truncated-lut", "asset", [*TINY, "tracking=none"], expect="recovered",
         setup=lambda tmp, kit: _cache_asset(tmp, "ofa/note10/224_lookup_table.yaml", None),
         verify=lambda tmp, res, v: _cache_dropped(tmp, "ofa/note10/224_lookup_table.yaml", res)),
    Case("asset-mirror-corrupt", "asset", TINY, "checksum mismatch in mirror file",
         setup=lambda tmp, kit: _mirror_with(tmp, "ofa/acc_predictor.pth", b"corrupt"),
         env={"BLOCKPROF_ASSET_MIRROR": "{mirror}"}),
    Case("asset-nowhere", "asset", TINY, "download failed", env={"BLOCKPROF_ASSET_MIRROR": "{tmp}/no_mirror"}),
    Case("asset-cache-corrupt-no-mirror", "asset", TINY, "download failed",
         setup=lambda tmp, kit: _cache_asset(tmp, "ofa/acc_predictor.pth", b"corrupt"),
         env={"BLOCKPROF_ASSET_MIRROR": "{tmp}/no_mirror"}, allow=lambda rel: rel.startswith("cache/")),
    Case("asset-explicit-corrupt", "asset", [*TINY, "metric.accuracy.checkpoint={file}"], "checksum mismatch",
         setup=write("acc.pth", b"not the predictor")),
    Case("asset-explicit-missing", "asset", [*TINY, "metric.accuracy.checkpoint={tmp}/nope.pth"], "does not exist"),
    Case("asset-explicit-lut-corrupt", "asset", [*TINY, "device.latency.table={file}"], "lut.yaml",
         setup=write("lut.yaml", "not: [a, table")),
    # ------------------------------------------------------------------ file system
    Case("root-under-file", "filesystem", [*TINY, "paths.output_root={file}/out"], "a_file",
         setup=write("a_file", "x")),
    Case("root-is-file", "filesystem", [*TINY, "paths.output_root={file}"], "a_file", setup=write("a_file", "x")),
    Case("root-immutable", "filesystem", [*TINY, "paths.output_root={file}"], "ro_root",
         setup=lambda tmp, kit: _immutable(tmp / "ro_root")),
    Case("run-dir-is-file", "filesystem", [*TINY, "hydra.run.dir={file}"], "a_file", setup=write("a_file", "x")),
    Case("run-dir-other-task", "filesystem", [*SEARCH, "hydra.run.dir={file}"], "holds a task=profile run",
         setup=copy_kit("profile_run", dest="run"), allow=lambda rel: rel.startswith("run/.hydra")),
    Case("store-garbage", "filesystem", [*TINY], expect="recovered", setup=write("out/mlflow.db", b"\x00garbage" * 100),
         verify=lambda tmp, res, v: _untracked_but_kept(tmp, res)),
    Case("store-is-folder", "filesystem", [*TINY], expect="recovered",
         setup=lambda tmp, kit: (tmp / "out" / "mlflow.db").mkdir(parents=True) or {},
         verify=lambda tmp, res, v: _untracked_but_kept(tmp, res)),
    Case("data-dir-is-file", "filesystem", ["device=npu", "task.num_archs=2", "paths.data_dir={file}"],
         "a_file", setup=write("a_file", "x")),
    # ------------------------------------------------------------------ dead servers
    Case("server-closed-port", "server", [*TINY, "tracking=server", "tracking.uri=http://127.0.0.1:{port}",
                                          "tracking.max_retries=0", "tracking.request_timeout_s=2"],
         expect="recovered", verify=lambda tmp, res, v: _untracked_but_kept(tmp, res, t_max=60)),
    Case("server-silent", "server", [*TINY, "tracking=server", "tracking.uri=http://127.0.0.1:{silent}",
                                     "tracking.max_retries=0", "tracking.request_timeout_s=1"],
         expect="recovered", verify=lambda tmp, res, v: _untracked_but_kept(tmp, res, t_max=60)),
    Case("server-env-dead", "server", [*TINY, "tracking=server", "tracking.max_retries=0",
                                       "tracking.request_timeout_s=2"], expect="recovered",
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"},
         verify=lambda tmp, res, v: _untracked_but_kept(tmp, res, t_max=60)),
    Case("server-bad-scheme", "server", [*TINY, "tracking=server", "tracking.uri=ftp://nowhere"], "ftp://nowhere"),
    # ------------------------------------------------------------------ found before the run opens
    *[Case(f"num-archs-huge-{task}", "config", [f"task={task}", "task.num_archs=1000000000"],
           "task.num_archs must be at most 10,000,000") for task in ("profile", "evaluate", "export")],
    Case("num-archs-overflow", "config", ["task.num_archs=99999999999999999999999"],
         "task.num_archs must be at most 10,000,000"),
    Case("bands-limits-empty", "config", [*SEARCH, "search=bands", "search.cost_limits.latency=[]"],
         "search.cost_limits.latency must be a non-empty list of positive numbers"),
    Case("bands-limits-negative", "config", [*SEARCH, "search=bands", "search.cost_limits.latency=[-5,10]"],
         "search.cost_limits.latency must be a non-empty list of positive numbers"),
    Case("cost-limits-text", "config", [*SEARCH, "search.cost_limits.latency=abc"], "search.cost_limits.latency"),
    *[Case(f"constraint-unmeetable-{s}", "config", [*SEARCH_MIN, f"search={s}", "search.constraint.latency=1",
                                                      "search.init_max_checks=3000"],
           "no arch of the search space meets latency <= 1") for s in ("evolution", "rm_cons_acc")],
    Case("constraint-text", "config", [*SEARCH_MIN, "search=rm_cons_acc", "search.constraint.latency=abc"],
         "search.constraint.latency must be a positive number"),
    Case("measure-lut-device", "config", ["task=measure", "device=note10"], "device 'note10' times none"),
    Case("measure-other-space-csv", "csv", ["task=measure", "space=pn", "device=local_cpu", "task.num_archs=2",
                                            "task.csv={file}"], "lat.csv:2", setup=copy_kit("npu.csv", dest="lat.csv")),
    *[Case(f"measure-threads-{name}", "config", ["task=measure", "device=ort_cpu", f"task.threads={n}",
                                                 "task.clock=wall", "task.num_archs=2"],
           "task.threads is a number of CPU threads") for name, n in (("zero", 0), ("negative", -1))],
    Case("metric-threads-zero", "config", ["device=local_cpu", "device.latency.threads=0", "task.num_archs=2"],
         "device.latency.threads is a number of CPU threads"),
    Case("merge-missing-input", "config", ["task=merge_profile", "task.inputs=[{tmp}/no_such_run]"],
         "is not a finished profile run"),
    Case("export-out-dir-file", "filesystem", ["task=export", "task.num_archs=1", "task.out_dir={file}"],
         "is a file, not a folder", setup=write("a_file", "x")),
    Case("export-out-dir-unwritable", "filesystem", ["task=export", "task.num_archs=1",
                                                     "task.out_dir=/proc/blockprof_export"], "is not writable"),
    Case("export-out-dir-locked", "concurrent", [], "in use by another export", runner=_export_held,
         allow=lambda rel: rel.startswith("exports/")),
    Case("init-from-missing", "checkpoint", [*TRAIN, "task.init_from={tmp}/nope.pt"],
         "task.init_from", setup=_kit_csv_and_ckpt(None)),
    Case("init-from-truncated", "checkpoint", [*TRAIN, "task.model=gnn", "task.init_from={ckpt}"],
         "task.init_from: cannot read latency predictor checkpoint", setup=_kit_csv_and_ckpt(_truncate(0.5))),
    Case("init-from-other-space", "checkpoint", ["task=train_predictor", "space=pn", "device=npu", "task.csv={file}",
                                                 "task.model=linear", "task.checkpoint=ckpt/out.pt",
                                                 "task.init_from={ckpt}"],
         "task.init_from", setup=_pn_csv_and("npu_linear.pt")),
    Case("delete-key", "config", ["~seed"], "cannot delete 'seed'"),
    Case("delete-group", "config", ["~space"], "cannot delete 'space'"),
    Case("config-dir-broken-yaml", "config", ["--config-dir", "{tmp}/myconf", "device=bad"], "myconf/device/bad.yaml",
         setup=write("myconf/device/bad.yaml", "name: bad\nlatency: {source: lut, table\n")),
    Case("unquoted-space", "config", ["task.num_archs=2", "hello"], "quote a value that holds spaces"),
    Case("shell-characters", "config", ["task.name=a;b"], "quote the value"),
    Case("optuna-no-trials", "config", ["-m", "hparams_search=rm_pareto_hv", "hydra.sweeper.n_trials=0"],
         "hydra.sweeper.n_trials"),
    Case("api-run-refused", "config", [], "task.num_archs must be >= 1", runner=_api_refused),
    Case("asset-mirror-lacks-table", "asset", [], "download failed", runner=_mirror_missing_table,
         allow=lambda rel: rel.startswith("mirror/")),
    # ------------------------------------------------------------------ kills, interrupts, races
    Case("profile-sigkill", "kill", [], expect="recovered", slow=True,
         setup=lambda tmp, kit: {"kit": kit},
         runner=_interrupted_then_rerun(KILL_PROFILE, _chunks(3), signal.SIGKILL, -signal.SIGKILL),
         verify=_profile_resumed),
    Case("profile-sigterm", "kill", [], expect="recovered", slow=True,
         setup=lambda tmp, kit: {"kit": kit},
         runner=_interrupted_then_rerun(KILL_PROFILE, _chunks(3), signal.SIGTERM, -signal.SIGTERM),
         verify=_profile_resumed),
    Case("profile-ctrl-c", "interrupt", [], expect="recovered", slow=True,
         setup=lambda tmp, kit: {"kit": kit},
         runner=_interrupted_then_rerun(KILL_PROFILE, _chunks(3), signal.SIGINT, 130),
         verify=_profile_resumed),
    Case("search-sigkill", "kill", [], expect="recovered", slow=True,
         setup=lambda tmp, kit: {"kit": kit},
         runner=_interrupted_then_rerun(SEARCH, _journal(1), signal.SIGKILL, -signal.SIGKILL),
         verify=_search_resumed_kill),
    Case("search-ctrl-c", "interrupt", [], expect="recovered", slow=True,
         setup=lambda tmp, kit: {"kit": kit},
         runner=_interrupted_then_rerun(SEARCH, _journal(1), signal.SIGINT, 130),
         verify=_search_resumed_kill),
    Case("same-folder-race", "concurrent", [], expect="ok", slow=True, runner=_race_same_folder,
         verify=_race_same_folder_ok),
    Case("two-runs-same-moment", "concurrent", [], expect="ok", slow=True, runner=_race_two_runs,
         verify=_two_runs_ok),
    Case("folder-held-by-live-run", "concurrent", [], expect="ok", runner=_held_folder),
]


# ===================================================================== the test
def _fmt(s: str, values: dict) -> str:
    for k, v in values.items():
        s = s.replace("{" + k + "}", str(v))
    return s


# Cases still failing for reasons outside this battery's files (none at present); a case
# listed here is expected to fail, strictly, so the mark goes when the fix lands.
PENDING: dict[str, str] = {}


def _params():
    for c in CASES:
        marks = []
        if c.slow:
            marks.append(pytest.mark.slow)
        why = c.xfail or PENDING.get(c.id)
        if why:
            marks.append(pytest.mark.xfail(strict=True, reason=why))
        yield pytest.param(c, id=f"{c.category}-{c.id}", marks=marks)


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, kit, tmp_path):
    values = {"tmp": tmp_path, "port": closed_port()}
    silent = None
    if "{silent}" in " ".join(case.args):
        silent = _SilentServer()
        values["silent"] = silent.port
    env = _env(tmp_path)
    try:
        if case.setup:
            values.update(case.setup(tmp_path, kit) or {})
        args = [_fmt(a, values) for a in case.args]
        if not any(a.startswith("paths.output_root=") for a in args) and case.runner is None:
            args.append(f"paths.output_root={tmp_path / 'out'}")
        env.update({k: _fmt(v, values) for k, v in case.env.items()})
        before = snapshot(tmp_path)
        runs_before = mlflow_runs(tmp_path / "out")
        t0 = time.monotonic()
        if case.runner is not None:
            res = case.runner(tmp_path, kit, values)
        else:
            res = (cli_proc if case.proc else cli)(args, tmp_path, env)
        elapsed = time.monotonic() - t0
        after = snapshot(tmp_path)
    finally:
        if silent:
            silent.close()
        if "_cleanup" in values:
            values["_cleanup"]()
    stage = "traceback"  # what a failing assertion below means, for the battery's table
    try:
        assert "Traceback" not in res.err + res.out, res.err[-3000:]
        stage = "wrong"
        assert "\x00" not in res.err, "a NUL byte echoed raw"
        if case.expect == "error":
            stage = "silent" if res.rc == 0 else "wrong"
            assert res.rc == 2, f"exit {res.rc}: {res.err[-3000:]}"
            stage = "wrong"
            assert len(res.error_lines) == 1, res.err[-3000:]
            assert _fmt(case.needle, values) in res.error_lines[0], res.error_lines[0]
            stage = "leftover"
            assert_nothing_left(before, after, lambda rel: case.allow(rel) or rel.startswith("no_seed_data"))
            assert mlflow_runs(tmp_path / "out") == runs_before
        else:
            assert res.rc == 0, f"exit {res.rc}: {res.err[-3000:]}"
            assert not res.error_lines, res.err[-3000:]
            if case.verify:
                case.verify(tmp_path, res, values)
            assert elapsed < 120
            # nothing is left RUNNING in the store
            stage = "leftover"
            assert all(s != "RUNNING" for _, s in mlflow_runs(tmp_path / "out"))
    except AssertionError:
        TABLE.append((case.category, stage))
        raise
    TABLE.append((case.category, {"error": "clean"}.get(case.expect, case.expect)))


# (category, outcome) of every case run in this session: clean | recovered | ok, or what
# went wrong (traceback | silent | leftover | wrong)
TABLE: list[tuple[str, str]] = []
_COLUMNS = ("tried", "clean", "recovered", "ok", "traceback", "silent", "leftover", "wrong")


def battery_table(rows: list[tuple[str, str]]) -> str:
    """The outcomes by category: clean (refused in one line, nothing left), recovered, ok,
    and the failures by kind."""
    cats = sorted({c for c, _ in rows})
    lines = [f"{'category':<12}" + "".join(f"{c:>10}" for c in _COLUMNS)]
    for cat in [*cats, "all"]:
        got = [o for c, o in rows if cat in (c, "all")]
        counts = {"tried": len(got), **{k: got.count(k) for k in _COLUMNS[1:]}}
        lines.append(f"{cat:<12}" + "".join(f"{counts[k]:>10}" for k in _COLUMNS))
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _print_table(request):
    """After the module: the table in pytest's report and, with
    BLOCKPROF_BATTERY_TABLE=<file>, in that file."""
    yield
    if not TABLE:
        return
    table = battery_table(TABLE)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n\nbad-input battery\n" + table, flush=True)
    if os.environ.get("BLOCKPROF_BATTERY_TABLE"):
        Path(os.environ["BLOCKPROF_BATTERY_TABLE"]).write_text(table + "\n")


def test_battery_size():
    """At least 100 cases, across every category."""
    cats = {c.category for c in CASES}
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    assert {"config", "blocks", "csv", "insight", "checkpoint", "asset", "filesystem", "server", "kill",
            "interrupt", "concurrent"} <= cats
