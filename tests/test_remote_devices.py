"""Measured devices that time elsewhere, against real components:

* device=ssh: a real OpenSSH server on 127.0.0.1 (throw-away ed25519 keys, a free port,
  started here and stopped after), the board's python being the test's own interpreter, so
  the shipped runner times with the same onnxruntime as the local ort_cpu device. Measures 5 archs, survives the
  server being killed mid-chunk, resumes with nothing timed twice.
* device=command: a real timing tool (tests/tools/ort_benchmark_model.py: ONNX Runtime,
  printing TensorFlow Lite benchmark_model's result line), run from a --config-dir device
  file and with the template and pattern given on a real shell command line.

OpenSSH's server (Debian's openssh-server, /usr/sbin/sshd) is needed for the SSH tests:
without it they skip, unless BLOCKPROF_REQUIRE_SERVICES=1 (CI), where they fail."""
from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import read_latency_csv
from blockprof.core.registry import build_space
from blockprof.metrics.command_tool import CommandEngine, compile_pattern, parse_latency_ms
from conftest import REPO, compose, run_cli
from test_server import free_port, listening, require

SSHD = Path("/usr/sbin/sshd")
TOOL = REPO / "tests" / "tools" / "ort_benchmark_model.py"
SMALL = ["space=mbv3", "space.resolutions=[160]"]  # the smallest subnets: cheap exports and timings


# ------------------------------------------------------------------ a real sshd on loopback
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name), read from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        out[int(d.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), name)
    return out


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"  # a zombie waiting for a reaper has exited


class Sshd:
    """`sshd -D` on 127.0.0.1:port with its own host key and one authorized client key."""

    def __init__(self, root: Path):
        require(SSHD.exists(), "OpenSSH's server is not installed (apt-get install openssh-server)")
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, free_port()
        self.host_key, self.client_key = root / "host_key", root / "client_key"
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "blockprof-test", "-f", str(key)],
                           check=True)
        self.authorized = root / "authorized_keys"
        self.authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = root / "known_hosts"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        if os.geteuid() == 0:  # sshd run by root wants its privilege-separation folder, as the service makes it
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.root / "sshd.log", "ab")
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", "/dev/null", "-p", str(self.port), "-o", "ListenAddress=127.0.0.1",
             "-h", str(self.host_key), "-o", f"AuthorizedKeysFile={self.authorized}", "-o", "StrictModes=no",
             "-o", "PidFile=none"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()[-1500:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Kill the server and its per-connection processes (they leave its session), as a
        crash or a reboot would: what they run on the board is left to notice on its own."""
        if self.proc is None:
            return
        table = _proc_table()
        pids, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo += [p for p, (ppid, name) in table.items() if ppid == pid and name.startswith("sshd")]
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None

    def device_yaml(self, name: str, board: Path, cache: Path) -> str:
        """A --config-dir device file for this board, as a user would write one."""
        return (f"# my board over SSH\ndefaults:\n  - /schema/device/latency/ssh@latency\n  - _self_\n"
                f"name: {name}\nlatency:\n  host: 127.0.0.1\n  port: {self.port}\n"
                f"  identity_file: {self.client_key}\n  known_hosts: {self.known_hosts}\n"
                f"  remote_dir: {board}\n  python: {sys.executable}\n  cache_dir: {cache}\n")

    def overrides(self, board: Path, cache: Path) -> list[str]:
        return ["device=ssh", "device.latency.host=127.0.0.1", f"device.latency.port={self.port}",
                f"device.latency.identity_file={self.client_key}", f"device.latency.known_hosts={self.known_hosts}",
                f"device.latency.remote_dir={board}", f"device.latency.python={sys.executable}",
                f"device.latency.cache_dir={cache}"]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One export cache for the module: the same seeded archs are exported once."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def _runner_log(board: Path) -> list[tuple[str, int, list[str]]]:
    lines = (board / "runner.log").read_text().splitlines() if (board / "runner.log").exists() else []
    return [(w[1], int(w[2]), w[3:]) for w in (ln.split() for ln in lines)]


# ------------------------------------------------------------------ SSH
def test_ssh_board_measures_5_archs_and_resumes_after_the_server_dies(tmp_path, onnx_cache):
    """A --config-dir board file (the README walk-through); sshd is killed while the board
    times the last chunk, restarted, and `python run.py` reruns the same command to the
    end with nothing timed twice."""
    from blockprof.app.compose import compose as compose_with_dir
    server = Sshd(tmp_path / "sshd").start()
    try:
        board, conf, csv_path = tmp_path / "board", tmp_path / "myconf", tmp_path / "myboard.csv"
        (conf / "device").mkdir(parents=True)
        (conf / "device" / "myboard.yaml").write_text(server.device_yaml("myboard", board, onnx_cache))
        overrides = ["device=myboard", "task=measure", *SMALL, "task.num_archs=5", "task.chunk_size=2",
                     "task.rounds=15", "task.warmup=0", "task.references=1", "task.retest_archs=0",
                     f"task.csv={csv_path}", "tracking=none", f"paths.output_root={tmp_path / 'out'}"]
        # the interrupted session runs here (a thread: one interpreter start less), the rerun as a user would
        failure: list[BaseException] = []

        def first_session():
            try:
                execute(compose_with_dir(overrides, config_dir=str(conf)), run_dir=tmp_path / "run1")
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                failure.append(e)
        worker = threading.Thread(target=first_session)
        worker.start()
        # calibration, chunks [0, 1], [2, 3], [4]: kill the server once the board is timing the last
        # one (every model is exported by then, so the rerun below only times)
        deadline = time.monotonic() + 180
        while sum(w == "start" for w, _, _ in _runner_log(board)) < 4:
            assert worker.is_alive(), f"measure ended before the kill: {failure}"
            assert time.monotonic() < deadline, "the board never started chunk 3"
            time.sleep(0.005)
        cut = _runner_log(board)[-1]
        # hold the runner mid-rounds while the server dies, so the cut is always inside a timing
        os.kill(cut[1], signal.SIGSTOP)
        server.stop()
        os.kill(cut[1], signal.SIGCONT)
        worker.join(timeout=120)
        assert len(failure) == 1 and isinstance(failure[0], UserError), failure
        message = str(failure[0])
        assert "\n" not in message
        assert message.startswith(f"ssh device 127.0.0.1:{server.port}: the connection was lost while timing 2 subnets")
        assert message.endswith("rerun the same command to resume")
        space = build_space("mbv3", resolutions=[160])
        assert [r.net_id for r in read_latency_csv(csv_path, space)] == [0, 1, 2, 3]

        # the runner of the dropped connection stops by itself (its stdin closed) and never finishes
        assert cut[0] == "start"
        deadline = time.monotonic() + 15
        while not _gone(cut[1]):
            assert time.monotonic() < deadline, "the orphaned runner kept timing"
            time.sleep(0.05)
        assert not any(w == "done" and pid == cut[1] for w, pid, _ in _runner_log(board))

        server.start()
        res = run_cli(["--config-dir", str(conf), *overrides], cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        rows = read_latency_csv(csv_path, space)
        assert [r.net_id for r in rows] == [0, 1, 2, 3, 4]
        assert all(r.device == "myboard" and 1 < r.latency_ms < 1000 for r in rows)
        timed = [int(row[0]) for row in csv.reader(open(f"{csv_path}.rounds.csv")) if row[2] == "measure"]
        assert sorted(i for i in timed if i >= 0) == [0, 1, 2, 3, 4]  # each arch in exactly one chunk
        meta = json.loads(Path(f"{csv_path}.meta.json").read_text())
        assert meta["engine"] == "ssh:onnxruntime" and meta["protocol"]["clock"] == "cpu"
        assert [s["already_measured"] for s in meta["sessions"]] == [0, 4] and meta["sessions"][1]["measured"] == 1
        assert meta["machine"]["remote"] == f"127.0.0.1:{server.port}"

        # on the board: every arch's model timed to completion once; the reference in every chunk
        log = _runner_log(board)
        ref = log[0][2]
        assert len(ref) == 1
        done = [f for w, _, files in log[1:] if w == "done" for f in files if f not in ref]
        assert len(done) == 5 and len(set(done)) == 5, log
        assert len(list((board / "models").glob("*.onnx"))) == 6 and not list((board / "models").glob("*.part"))
    finally:
        server.stop()


def test_ssh_board_is_a_measured_latency_for_evaluate(sshd, tmp_path, onnx_cache):
    """source: measured through the board in task=evaluate; on this same machine the board's
    timings agree with the local ONNX Runtime device's."""
    common = ["task=evaluate", *SMALL, "task.num_archs=2", "metric.names=[latency]", "tracking=none",
              "device.latency.source=measured",
              "device.latency.repeats=3", "device.latency.warmup=1", "device.latency.references=1",
              "device.latency.chunk_size=2"]
    board = tmp_path / "board"
    remote = execute(compose([*common, *sshd.overrides(board, onnx_cache)], tmp_path / "o1"), run_dir=tmp_path / "r1")
    local = execute(compose([*common, "device=ort_cpu", f"device.latency.cache_dir={onnx_cache}"], tmp_path / "o2"),
                    run_dir=tmp_path / "r2")
    assert list(remote["arch"]) == list(local["arch"])
    ratio = np.asarray(remote["latency"]) / np.asarray(local["latency"])
    assert np.all((ratio > 0.5) & (ratio < 2.0)), (list(remote["latency"]), list(local["latency"]))
    assert (board / "runner.log").is_file()


def test_ssh_board_lacks_are_one_line_at_start_leaving_nothing(sshd, tmp_path, onnx_cache):
    board, csv_path = tmp_path / "board", tmp_path / "lat.csv"
    # a python on the board that cannot import the engine
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "onnxruntime.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    no_engine = tmp_path / "python-without-onnxruntime"
    no_engine.write_text(f"#!/bin/sh\nPYTHONPATH={blocker} exec {sys.executable} \"$@\"\n")
    no_engine.chmod(0o755)
    cases = [
        (["device.latency.python=/nonexistent/python"], "no python at '/nonexistent/python' on the board"),
        ([f"device.latency.python={no_engine}"], "cannot import numpy and onnxruntime"),
        ([f"device.latency.port={free_port()}"], "cannot connect (ssh: connect to host 127.0.0.1 port"),
        (["device.latency.host=null"], "set device.latency.host"),
        (["device.latency.engine=tensorrt"], "engine must be one of ['onnxruntime', 'openvino']"),
        ([f"device.latency.identity_file={tmp_path / 'nokey'}"], "identity file"),
    ]
    for extra, needle in cases:
        cfg = compose(["task=measure", *SMALL, "task.num_archs=1", "tracking=none", f"task.csv={csv_path}",
                       *sshd.overrides(board, onnx_cache), *extra], tmp_path / "out")
        with pytest.raises(UserError, match=None) as e:
            execute(cfg, run_dir=tmp_path / "run")
        assert needle in str(e.value) and "\n" not in str(e.value), (extra, str(e.value))
        assert not csv_path.exists() and not Path(f"{csv_path}.meta.json").exists()


# ------------------------------------------------------------------ vendor command
BENCH_LINE = ("INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, "
              "Inference (avg): 63743.2")
TRTEXEC_LINE = ("[09/02/2024-17:14:34] [I] GPU Compute Time: min = 0.803711 ms, max = 4.93372 ms, mean = 0.818735 ms, "
                "median = 0.809937 ms, percentile(90%) = 0.811035 ms, percentile(95%) = 0.811035 ms")


def test_named_patterns_read_the_tools_real_result_lines():
    assert parse_latency_ms(f"INFO: count=50\n{BENCH_LINE}\nINFO: Memory footprint", compile_pattern(
        "benchmark_model", None), None) == pytest.approx(63.7432)
    assert parse_latency_ms(f"[I] Latency: min = 1 ms, median = 2 ms\n{TRTEXEC_LINE}\n&&&& PASSED",
                            compile_pattern("trtexec", None), None) == pytest.approx(0.809937)
    rx = compile_pattern(r"took ([0-9.]+) (us|ms|s)\b", None)
    assert parse_latency_ms("took 9 ms\ntook 1.5 s", rx, None) == pytest.approx(1500)  # the last match counts
    assert parse_latency_ms("took 250 us", rx, None) == pytest.approx(0.25)
    assert parse_latency_ms("latency=3.5", compile_pattern(r"latency=([0-9.]+)", "us"), "us") == pytest.approx(0.0035)
    assert parse_latency_ms("nothing here", rx, None) is None
    for bad, needle in [("time: [0-9", "not a regular expression"), ("time: [0-9.]+", "needs a group"),
                        ("t=([0-9.]+)", "device.latency.unit must be one of")]:
        with pytest.raises(UserError, match=needle):
            compile_pattern(bad, "minutes")


def _device_file(conf: Path, name: str, body: str) -> None:
    (conf / "device").mkdir(parents=True, exist_ok=True)
    (conf / "device" / f"{name}.yaml").write_text(
        f"defaults:\n  - /schema/device/latency/command@latency\n  - _self_\nname: {name}\nlatency:\n{body}")


def test_command_device_walkthrough_and_command_line_quoting(tmp_path, onnx_cache):
    """A --config-dir tool device (the README walk-through), then the same tool given on a real
    shell command line exactly as docs/remote_devices.md writes it: template and regular
    expression quoted for Hydra inside the shell's quotes, the unit given apart."""
    conf, calls = tmp_path / "myconf", tmp_path / "calls.log"
    _device_file(conf, "mytool", f"  command: {sys.executable} {TOOL} --graph={{onnx}} --num_runs=3\n"
                                 "  pattern: benchmark_model\n"
                                 f"  cache_dir: {onnx_cache}\n")
    csv1, csv2 = tmp_path / "tool.csv", tmp_path / "cli.csv"
    res = run_cli(["--config-dir", str(conf), "device=mytool", "task=measure", *SMALL, "task.num_archs=2",
                   "task.rounds=1", "task.warmup=0", "task.references=1", "task.retest_archs=0", f"task.csv={csv1}",
                   "tracking=none", f"paths.output_root={tmp_path / 'out'}"], cwd=tmp_path,
                  env={"ORT_BENCH_LOG": str(calls)})
    assert res.returncode == 0, res.stderr[-3000:]
    space = build_space("mbv3", resolutions=[160])
    rows = read_latency_csv(csv1, space)
    assert [r.net_id for r in rows] == [0, 1] and all(r.device == "mytool" and 1 < r.latency_ms < 1000 for r in rows)
    meta = json.loads(Path(f"{csv1}.meta.json").read_text())
    assert meta["engine"] == "command" and meta["protocol"]["clock"] == "tool"
    # one call per timing: the reference 3x1 rounds to calibrate, then 2 archs + the reference once
    assert len(calls.read_text().splitlines()) == 3 + 3

    line = (f"{shlex.quote(sys.executable)} {REPO / 'run.py'} device=command task=measure space=mbv3 "
            "space.resolutions=[160] task.num_archs=1 task.rounds=1 task.warmup=0 task.references=0 "
            f"task.retest_archs=0 task.csv={csv2} tracking=none paths.output_root={tmp_path / 'out'} "
            f"device.latency.cache_dir={onnx_cache} "
            f"'device.latency.command=\"{sys.executable} {TOOL} --graph={{onnx}} --num_runs=3\"' "
            "'device.latency.pattern=\"Inference \\(avg\\): ([0-9.]+)\"' device.latency.unit=us")
    res = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (again,) = read_latency_csv(csv2, space)
    assert again.arch == rows[0].arch
    assert 0.5 < again.latency_ms / rows[0].latency_ms < 2.0  # us read as us, not ms


def test_command_failures_name_the_file_and_the_tools_last_line(tmp_path, onnx_cache):
    space = build_space("mbv3", resolutions=[160])
    arch = space.sample(np.random.default_rng(0), 1)[0]
    tool = f"{sys.executable} {TOOL} --graph={{onnx}} --num_runs=1"

    def engine(command, **kw):
        return CommandEngine(space, 1, cache_dir=onnx_cache, command=command, **kw)

    files = engine(tool).prepare(arch)
    with pytest.raises(UserError) as e:
        engine(tool + " --fail").time_once(files)
    assert str(files.onnx) in str(e.value) and "failed (exit 1)" in str(e.value)
    assert str(e.value).endswith(f"last line: ERROR: Could not open '{files.onnx}'.")
    with pytest.raises(UserError, match=r"no latency in the output of timing .*\.onnx .*last line: INFO: done$"):
        engine(tool + " --quiet").time_once(files)
    with pytest.raises(UserError, match=r"took over 0.2 s"):
        engine("sleep 5 # {onnx}", timeout_s=0.2).time_once(files)
    # {tflite}: the conversion command runs once per arch (a copy stands in for a converter: no
    # TFLite converter is a test dependency; the timing tool reads the file by its content)
    conv = engine(f"{sys.executable} {TOOL} --graph={{tflite}} --num_runs=1", convert="cp {onnx} {tflite}")
    ms = conv.time_once(conv.prepare(arch))
    assert ms > 0 and files.onnx.with_suffix(".tflite").is_file()
    # task=measure whose tool fails on the first subnet: one line, and no CSV, meta or rounds file left
    csv_path = tmp_path / "failing.csv"
    cfg = compose(["task=measure", *SMALL, "device=command", "task.num_archs=1", "task.references=1",
                   "task.rounds=1", "task.warmup=0", "tracking=none", f"task.csv={csv_path}",
                   f"device.latency.cache_dir={onnx_cache}", f'device.latency.command="{tool} --fail"'], tmp_path / "o")
    with pytest.raises(UserError, match=r"command device: timing .*\.onnx failed \(exit 1\); last line: ERROR"):
        execute(cfg, run_dir=tmp_path / "run")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("failing.csv")]
    for kw, needle in [(dict(command=None), "set device.latency.command"),
                       (dict(command="trtexec --onnx=model.onnx"), "no {onnx} or {tflite} placeholder"),
                       (dict(command="benchmark_model --graph={tflite}"), "set device.latency.convert"),
                       (dict(command="no-such-tool-here --graph={onnx}"),
                        "'no-such-tool-here' (device.latency.command) is not a program"),
                       (dict(command=tool, pattern="x(["), "not a regular expression")]:
        with pytest.raises(UserError, match=None) as e:
            CommandEngine(space, 1, cache_dir=onnx_cache, **kw)
        assert needle in str(e.value), str(e.value)
