"""Team tracking against a real `mlflow server` on loopback with a PostgreSQL backend store
(a private cluster started here) and an artifact folder; an unreachable server, then
`python -m blockprof.sync` once it is up; sync resuming a partly tracked run.

PostgreSQL (Debian's `postgresql`) is needed for the server tests: without it they skip,
unless BLOCKPROF_REQUIRE_SERVICES=1 (CI), where they fail."""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from blockprof.app.main import execute
from blockprof.infra.sync import main as sync_main
from blockprof.infra.tracking import MARKER, prepare_store, track_run
from conftest import compose, run_cli

REQUIRE = os.environ.get("BLOCKPROF_REQUIRE_SERVICES") == "1"
TINY = ["task.all=false", "task.blocks=[[1,0,7,6]]", "task.num_archs=2", "metric.names=[mmacs,latency]"]
UNSAFE_PORTS = {5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6697, 10080}  # Chrome refuses these


# ------------------------------------------------------------------ services (also used by test_ui.py)
def require(ok: bool, reason: str) -> None:
    """Skip when a service's binaries are missing; fail instead where CI promised them."""
    if not ok:
        (pytest.fail if REQUIRE else pytest.skip)(f"{reason} (BLOCKPROF_REQUIRE_SERVICES={int(REQUIRE)})")


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in UNSAFE_PORTS:
            return port


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a process we started in its own session, with everything it spawned."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@dataclass
class MlflowServer:
    uri: str
    artifacts: Path
    backend: str
    proc: subprocess.Popen


def start_mlflow_server(backend_uri: str, artifacts: Path, port: int, log: Path,
                        timeout: float = 240) -> MlflowServer:
    """`mlflow server` on 127.0.0.1:port, healthy (GET /health == OK), one worker, no job runner."""
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else shutil.which("mlflow") or "mlflow", "server",
           "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", artifacts, backend_uri, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as r:
                if r.read().strip() == b"OK":
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    _stop_group(proc)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop_mlflow_server(server: MlflowServer) -> None:
    _stop_group(server.proc)


def _pg_bindir() -> Path | None:
    """Debian keeps initdb/pg_ctl off PATH, under /usr/lib/postgresql/<version>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    exe = shutil.which("initdb")
    return Path(exe).resolve().parent if exe else None


@dataclass
class Postgres:
    uri: str          # for MLflow / SQLAlchemy
    conninfo: str     # for psycopg
    stop: callable


def start_postgres() -> Postgres:
    """A private cluster on a free loopback port: initdb + pg_ctl as user postgres when we are
    root (initdb refuses root), a database and a password login for MLflow."""
    bindir = _pg_bindir()
    require(bindir is not None and (bindir / "pg_ctl").exists(),
            "PostgreSQL is not installed (apt-get install postgresql)")
    require(importlib.util.find_spec("psycopg") is not None, "psycopg 3 is not installed (pip install 'psycopg[binary]')")
    as_user: list[str] = []
    top = Path(tempfile.mkdtemp(prefix="blockprof-pg-"))  # in /tmp: reachable by the postgres user
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(top)
            require(False, "running as root without a 'postgres' user to run PostgreSQL as")
        os.chown(top, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port, password = top / "data", free_port(), "blockprof-test"

    def run(*cmd):
        r = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd))}: {r.stdout[-1500:]} {r.stderr[-1500:]}")

    def stop():
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)

    run(bindir / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8", "--auth-local=trust",
        "--auth-host=scram-sha-256", "--no-sync", "--no-instructions")
    try:
        run(bindir / "pg_ctl", "-D", data, "-l", top / "postgres.log", "-w", "-t", "60", "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=off -c full_page_writes=off", "start")
        run(bindir / "psql", "-h", top, "-p", port, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
            "-c", f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'", "-c", "CREATE DATABASE mlflow OWNER mlflow")
    except Exception:
        stop()
        raise
    return Postgres(f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow",
                    f"host=127.0.0.1 port={port} dbname=mlflow user=mlflow password={password}", stop)


# ------------------------------------------------------------------ fixtures
PORT = free_port()  # the team server's address; nothing listens there until `server` starts


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """PostgreSQL + `mlflow server` on 127.0.0.1:PORT with an artifact folder (once per module)."""
    pg = start_postgres()
    tmp = tmp_path_factory.mktemp("mlflow_server")
    t0 = time.monotonic()
    try:
        srv = start_mlflow_server(pg.uri, tmp / "artifacts", PORT, tmp / "server.log")
    except Exception:
        pg.stop()
        raise
    print(f"\nmlflow server with PostgreSQL up in {time.monotonic() - t0:.1f} s at {srv.uri}")
    srv.pg = pg
    yield srv
    stop_mlflow_server(srv)
    pg.stop()


@pytest.fixture
def http_env(monkeypatch):
    """The tracker sets MLflow's HTTP retry knobs in os.environ: restore them afterwards."""
    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch


def _marker(run_dir: Path) -> dict:
    return json.loads((run_dir / MARKER).read_text())


# ------------------------------------------------------------------ tests
def test_unreachable_server_then_sync_uploads_everything(tmp_path, request, http_env, capsys):
    """Runs against a server that is down finish with their files and one line each; once the
    server is up, sync uploads them with params, metrics and artifacts - and only once."""
    assert not listening(PORT), "the server must not be up yet: this test runs first"
    uri, root = f"http://127.0.0.1:{PORT}", tmp_path / "outputs"
    sweep = tmp_path / "multirun" / "offline"
    t0 = time.monotonic()
    r = run_cli(["-m", "space=mbv3,pn", "device=note10", *TINY, "tracking=server", f"tracking.uri={uri}",
                 f"paths.output_root={root}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    cli_wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("tracking:")]
    assert len(lines) == 2, r.stderr[-3000:]  # one line per job
    assert all("MLflow unavailable" in ln and "python -m blockprof.sync" in ln for ln in lines)
    assert cli_wall < 120  # MLflow's defaults would retry for ~4 minutes per call
    # in process, timed precisely: the failing run costs seconds, not minutes
    t0 = time.monotonic()
    execute(compose(["task=evaluate", "task.num_archs=4", "metric.names=[mmacs]", "tracking=server",
                     f"tracking.uri={uri}"], root), run_dir=tmp_path / "single")
    assert time.monotonic() - t0 < 15
    assert sum(ln.startswith("tracking:") for ln in capsys.readouterr().err.splitlines()) == 1
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    run_dirs = [*jobs, tmp_path / "single"]
    for d in run_dirs:
        m = _marker(d)
        assert m["tracked"] is False and m["status"] == "FINISHED" and m["run_id"] is None
        assert m["uri"] == uri and "Connection refused" in m["error"]
    assert all((d / "summary.csv").is_file() and (d / "heatmap_latency_mean.png").is_file() for d in jobs)
    assert sync_main([str(tmp_path), "--timeout", "2", "--retries", "0"]) == 1  # still down: says so, keeps them
    assert "0 uploaded, 0 skipped, 3 failed" in capsys.readouterr().out

    srv = request.getfixturevalue("server")  # the server comes up at the recorded address
    assert sync_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sync: 3 uploaded, 0 skipped, 0 failed" in out, out
    client = MlflowClient(srv.uri)
    for d in run_dirs:
        m = _marker(d)
        assert m["tracked"] is True and m["uri"] == srv.uri
        run = client.get_run(m["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == m["run_name"]
        # the params the run logged when it ran (what its task used), not its whole config
        assert run.data.params["space.name"] == run.data.tags["space"] and "tracking.uri" not in run.data.params
        assert run.data.tags["blockprof.run_dir"] == str(d) and run.data.tags["mlflow.note.content"] == m["description"]
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.yaml" in arts
        if d in jobs:
            assert run.data.tags["sweep"] == "../multirun/offline" and run.data.tags["unit.latency"] == "ms"
            summary = pd.read_csv(d / "summary.csv")
            assert run.data.metrics["baseline_latency_mean"] == pytest.approx(summary["latency_mean"].iloc[0])
            assert {"summary.csv", "samples.csv", "heatmap_latency_mean.png"} <= arts
            got = client.download_artifacts(run.info.run_id, "summary.csv", str(tmp_path / "dl" / d.name))
            assert Path(got).read_bytes() == (d / "summary.csv").read_bytes()
    assert {client.get_run(_marker(d)["run_id"]).data.tags["space"] for d in jobs} == {"mbv3", "pn"}
    # and the artifacts landed in the server's artifact folder
    assert len(list(srv.artifacts.rglob("summary.csv"))) == 2
    # a second sync has nothing to do
    exps = [client.get_experiment_by_name(f"blockprof/{t}").experiment_id for t in ("profile", "evaluate")]
    n_runs = len(client.search_runs(exps))
    assert sync_main([str(tmp_path)]) == 0
    assert "sync: 0 uploaded, 3 skipped" in capsys.readouterr().out
    assert len(client.search_runs(exps)) == n_runs


def test_server_backend_tracks_into_postgres(server, tmp_path, http_env):
    """tracking=server with the URI from $MLFLOW_TRACKING_URI: the run is in PostgreSQL and
    its files in the server's artifact folder; no local store is created."""
    import psycopg

    http_env.setenv("MLFLOW_TRACKING_URI", server.uri)
    root = tmp_path / "outputs"
    df = execute(compose(["task=evaluate", "task.num_archs=6", "metric.names=[mmacs,params_m]", "tracking=server"],
                         root), run_dir=tmp_path / "run")
    m = _marker(tmp_path / "run")
    assert m["tracked"] is True and m["backend"] == "server" and m["uri"] == server.uri
    client = MlflowClient(server.uri)
    run = client.get_run(m["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["task"] == "evaluate"
    assert run.data.metrics["mmacs_mean"] == pytest.approx(df["mmacs"].mean())
    assert {"archs.csv", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert [p for p in server.artifacts.rglob("archs.csv") if m["run_id"] in str(p)]
    with psycopg.connect(server.pg.conninfo) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (m["run_id"],)).fetchone()
        n_params = conn.execute("SELECT count(*) FROM params WHERE run_uuid = %s", (m["run_id"],)).fetchone()
    assert status == ("FINISHED",) and n_params[0] == len(run.data.params) > 5
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()


def test_sync_resumes_a_partly_tracked_run_without_duplicates(tmp_path, capsys):
    """Tracking fails mid-run (MLflow refuses a changed param): what was sent stays, sync sends
    the rest into the same MLflow run. A tracking=none run goes only to an explicit --uri."""
    cfg = compose(["tracking=local"], tmp_path / "outputs")
    prepare_store(cfg)
    with track_run(cfg, tmp_path / "run", "profile") as tr:
        run_id = tr.run_id
        tr.log_metrics({"hv": 1.0}, step=0)
        tr.log_params({"space.name": "not-" + str(cfg.space.name)})  # refused by MLflow: tracking goes off
        tr.log_metrics({"hv": 2.0}, step=1)
        tr.log_table(pd.DataFrame({"a": [1, 2]}), "front.csv")
        assert tr.run_id is None
    assert "MLflow unavailable" in capsys.readouterr().err
    m = _marker(tmp_path / "run")
    assert m["tracked"] is False and m["run_id"] == run_id
    assert [e[-1] for e in m["journal"]["metrics"]] == [True, False]
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert [x.value for x in client.get_metric_history(run_id, "hv")] == [1.0]

    assert sync_main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}" in out and "MLflow keeps its own value of param(s) space.name" in out
    exp = client.get_experiment_by_name("blockprof/profile")
    assert len(client.search_runs([exp.experiment_id])) == 1  # the same run, completed
    assert sorted((x.step, x.value) for x in client.get_metric_history(run_id, "hv")) == [(0, 1.0), (1, 2.0)]
    assert "front.csv" in {a.path for a in client.list_artifacts(run_id)}
    assert client.get_run(run_id).info.status == "FINISHED"

    none_cfg = compose(["tracking=none"], tmp_path / "outputs")
    with track_run(none_cfg, tmp_path / "files_only", "evaluate") as tr:
        tr.log_metrics({"n": 3.0})
    assert sync_main([str(tmp_path)]) == 0
    assert "tracking=none (give --uri to upload it)" in capsys.readouterr().out
    assert sync_main([str(tmp_path / "files_only"), "--uri", client.tracking_uri]) == 0
    run = client.get_run(_marker(tmp_path / "files_only")["run_id"])
    assert run.data.metrics["n"] == 3.0 and run.data.tags["task"] == "evaluate"
    assert len(client.search_runs([exp.experiment_id, run.info.experiment_id])) == 2
    assert client.get_experiment(run.info.experiment_id).name == "blockprof/evaluate"
    assert sync_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
