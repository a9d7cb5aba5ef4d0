"""The SSH device: a board (Raspberry Pi, Jetson, any Linux box) timed over SSH with the
same protocol as the local engines.

blockprof exports each subnet to ONNX here (the engines' cache), copies the files it
lacks to the board, and a small runner (blockprof/metrics/remote_runner.py, shipped over
the connection at the start of each session) times a whole chunk there: every model of the
chunk and the reference subnets, warmed up, then the interleaved rounds in the orders
drawn here, with the board's CPU clock (1 thread) or wall clock. Only the raw matrix of
timings comes back; drift normalisation and the median stay in blockprof.metrics.timing.
One SSH round trip per chunk, never per timing: the network is never inside a timing.

The connection uses the system `ssh` client (OpenSSH), never a password prompt:
BatchMode, ConnectTimeout, the configured identity file only (IdentitiesOnly), keepalives
(a dead link is noticed in ~15 s, not hours), and `StrictHostKeyChecking=accept-new`
against blockprof's own known_hosts file (`device.latency.known_hosts`, by default in
blockprof's cache folder): the first connection records the board's host key, a changed
key later is refused. Files travel over the same ssh connection (a tar stream into the
runner), so the board needs neither scp nor an SFTP server - only python with numpy and
the engine, which the probe at start checks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from blockprof.common.errors import UserError
from blockprof.metrics.engines import _OnnxEngine

logger = logging.getLogger(__name__)

REMOTE_ENGINES = ("onnxruntime", "openvino")
RUNNER_SOURCE = (Path(__file__).with_name("remote_runner.py")).read_text()
RUNNER_NAME = f"runner-{hashlib.sha256(RUNNER_SOURCE.encode()).hexdigest()[:12]}.py"


def default_known_hosts() -> Path:
    from blockprof.common.assets import default_cache_dir
    return default_cache_dir() / "ssh_known_hosts"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _remote_path(p: str) -> str:
    """A path for the board's shell: quoted, with a leading ~/ left to the shell ($HOME)."""
    if p == "~":
        return '"$HOME"'
    if p.startswith("~/"):
        return '"$HOME"/' + shlex.quote(p[2:])
    return shlex.quote(p)


class SSHEngine(_OnnxEngine):
    """Times exported subnets on a board over SSH; `prepare` exports (here), `time_chunk`
    ships what the board lacks and runs one chunk's rounds there."""

    def __init__(self, space, threads=1, clock="cpu", batch_size=1, cache_dir="onnx_cache", *,
                 host: str | None, port: int = 22, user: str | None = None, identity_file: str | None = None,
                 engine: str = "onnxruntime", remote_dir: str = "blockprof-remote", python: str = "python3",
                 known_hosts: str | None = None, connect_timeout: int = 10, ssh_options=()):
        super().__init__(space, threads, clock, batch_size, cache_dir=cache_dir)
        if not host:
            raise UserError("ssh device: set device.latency.host (the board's name or address)")
        if engine not in REMOTE_ENGINES:
            raise UserError(f"ssh device: device.latency.engine must be one of {list(REMOTE_ENGINES)}, "
                            f"not '{engine}' (the engine that runs on the board)")
        if shutil.which("ssh") is None:
            raise UserError("ssh device: no `ssh` client on this machine (install OpenSSH's client)")
        self.engine, self.clock_kind = engine, clock
        self.name = f"ssh:{engine}"
        self.target = f"{user + '@' if user else ''}{host}:{int(port)}"
        kh = Path(known_hosts).expanduser() if known_hosts else default_known_hosts()
        kh.parent.mkdir(parents=True, exist_ok=True)
        self.base = ["ssh", "-T", "-p", str(int(port)),
                     "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
                     "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={kh}",
                     "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if identity_file:
            key = Path(identity_file).expanduser()
            if not key.is_file():
                raise UserError(f"ssh device: identity file {key} does not exist (device.latency.identity_file)")
            self.base += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        if user:
            self.base += ["-l", user]
        for opt in ssh_options or ():
            self.base += ["-o", str(opt)]
        self.base += [host, "--"]
        self.python, self.dir = python, remote_dir.rstrip("/") or "."
        self.runner = f"{self.dir}/{RUNNER_NAME}"
        self.remote: dict = {}
        self._have: dict[str, int] = {}
        self._probe()

    # ------------------------------------------------------------------ connection
    def _fail(self, proc, doing: str) -> UserError:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else (proc.stderr or "")
        out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else (proc.stdout or "")
        if proc.returncode == 255:  # ssh's own failure: the connection, not the remote command
            return UserError(f"ssh device {self.target}: the connection was lost while {doing} ({_last_line(err)}); "
                             "archs measured so far are kept: rerun the same command to resume")
        try:
            said = json.loads(_last_line(out))
        except ValueError:
            said = None
        detail = said.get("detail") if isinstance(said, dict) else None
        return UserError(f"ssh device {self.target}: the board failed while {doing} "
                         f"(exit {proc.returncode}): {detail or _last_line(err if err.strip() else out)}")

    def _probe(self) -> None:
        """At start: can we log in, is there python with numpy and the engine; install the runner."""
        program = f"RUNNER_SOURCE = {RUNNER_SOURCE!r}\n{RUNNER_SOURCE}"
        cmd = " ".join([_remote_path(self.python), "-", "install", _remote_path(self.dir), self.engine,
                        shlex.quote(RUNNER_NAME)])
        proc = self._stream(cmd, lambda stdin: stdin.write(program.encode()))
        said = _last_line(proc.stderr.decode(errors="replace"))
        if proc.returncode == 255:
            raise UserError(f"ssh device {self.target}: cannot connect ({said})")
        if proc.returncode in (126, 127):  # the shell's 'not found' / 'not executable'
            raise UserError(f"ssh device {self.target}: no python at '{self.python}' on the board "
                            f"(device.latency.python); the board said: {said}")
        try:
            info = json.loads(_last_line(proc.stdout.decode(errors="replace")))
        except ValueError:
            raise self._fail(proc, "probing") from None
        if info.get("error") == "import":
            raise UserError(f"ssh device {self.target}: '{self.python}' on the board cannot import numpy and "
                            f"{self.engine} ({info.get('detail')}); install them there "
                            f"(pip install numpy {self.engine})")
        if proc.returncode != 0:
            raise self._fail(proc, "probing")
        self._have = {str(k): int(v) for k, v in info.pop("models", {}).items()}
        self.remote = info
        logger.info("ssh device %s: python %s, %s %s, %s (%s cores), %d model(s) already there",
                    self.target, info.get("python"), self.engine, info.get(self.engine), info.get("cpu"),
                    info.get("cores"), len(self._have))

    def _remote_name(self, path: Path) -> str:
        return f"{self.space.name}-{path.name}"

    def _stream(self, remote_cmd: str, feed, keep_open: bool = False) -> subprocess.CompletedProcess:
        """Run `remote_cmd` on the board with `feed(stdin)` writing its input, streamed (a chunk's
        models can be hundreds of MB). keep_open: stdin stays open until the output is in - its
        EOF tells the runner that we are gone."""
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(self.base + [remote_cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=err)
            except OSError as e:  # pragma: no cover - ssh vanished between which() and here
                raise UserError(f"ssh device {self.target}: cannot run ssh ({e})") from None
            try:
                feed(proc.stdin)
                proc.stdin.flush()
                if not keep_open:
                    proc.stdin.close()
            except BrokenPipeError:
                pass  # the other end is gone: its exit status and stderr say why
            out = proc.stdout.read()
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            proc.wait()
            err.seek(0)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err.read())

    def _upload(self, paths: list[Path]) -> None:
        todo = [p for p in dict.fromkeys(paths) if self._have.get(self._remote_name(p)) != p.stat().st_size]
        if not todo:
            return
        logger.info("ssh device %s: copying %d model(s), %.1f MB", self.target, len(todo),
                    sum(p.stat().st_size for p in todo) / 1e6)

        def feed(stdin):
            with tarfile.open(fileobj=stdin, mode="w|") as tar:
                for p in todo:
                    tar.add(str(p), arcname=self._remote_name(p))
        proc = self._stream(f"{_remote_path(self.python)} {_remote_path(self.runner)} upload "
                            f"{_remote_path(self.dir)}", feed)
        if proc.returncode != 0:
            raise self._fail(proc, f"copying {len(todo)} model(s)")
        for p in todo:
            self._have[self._remote_name(p)] = p.stat().st_size

    # ------------------------------------------------------------------ Engine
    def prepare(self, arch):
        return self.onnx(arch)  # the export happens here; the copy and the timing per chunk

    def time_once(self, run) -> float:
        raise NotImplementedError("the ssh device times whole chunks (time_chunk), never one run per round trip")

    def time_chunk(self, runs, warmup: int, orders) -> np.ndarray:
        """Raw timings [len(runs), len(orders)] (ms) of the exported models `runs`, timed on the
        board in one session: warmup, then round r runs every model once in `orders[r]`."""
        paths = [Path(p) for p in runs]
        self._upload(paths)
        job = {"files": [self._remote_name(p) for p in paths], "orders": [[int(i) for i in o] for o in orders],
               "warmup": int(warmup), "engine": self.engine, "threads": self.threads,
               "clock": self.clock_kind, "batch_size": self.batch_size}
        cmd = f"{_remote_path(self.python)} {_remote_path(self.runner)} time {_remote_path(self.dir)}"
        done = self._stream(cmd, lambda stdin: stdin.write((json.dumps(job) + "\n").encode()), keep_open=True)
        out = done.stdout
        if done.returncode != 0:
            raise self._fail(done, f"timing {len(paths)} subnets")
        try:
            times = np.asarray(json.loads(_last_line(out.decode(errors="replace")))["times"], dtype=np.float64)
        except (ValueError, KeyError):
            raise self._fail(done, f"timing {len(paths)} subnets") from None
        if times.shape != (len(paths), len(orders)) or not np.all(times > 0):
            raise UserError(f"ssh device {self.target}: the runner returned timings of shape {times.shape}, "
                            f"expected {(len(paths), len(orders))} positive values")
        return times

    def info(self) -> dict:
        out = {"engine": self.name, self.engine: self.remote.get(self.engine), "remote": self.target,
               "remote_python": self.remote.get("python"), "remote_machine": self.remote.get("machine"),
               "remote_hostname": self.remote.get("hostname")}
        if self.remote.get("cpu"):
            out["cpu"] = self.remote["cpu"]  # the board's CPU, not this machine's
        return out

    @classmethod
    def from_config(cls, lat, space, *, threads: int, clock: str, batch_size: int, cache_dir):
        return cls(space, threads, clock, batch_size, cache_dir=cache_dir, host=lat.get("host"),
                   port=int(lat.get("port") or 22), user=lat.get("user"), identity_file=lat.get("identity_file"),
                   engine=str(lat.get("engine") or "onnxruntime"), remote_dir=str(lat.get("remote_dir") or
                                                                                  "blockprof-remote"),
                   python=str(lat.get("python") or "python3"), known_hosts=lat.get("known_hosts"),
                   connect_timeout=int(lat.get("connect_timeout") or 10),
                   ssh_options=list(lat.get("ssh_options") or []))
