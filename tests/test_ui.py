"""The MLflow UI in a real headless Chromium: a sweep's runs are listed in its experiment's
runs table (scripts/ui_screenshot.py), and a screenshot is saved under pytest's tmp dir.

Needs Debian's `chromium` + `chromium-driver` and selenium: without them the test skips,
unless BLOCKPROF_REQUIRE_SERVICES=1 (CI), where it fails."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time

from PIL import Image

from conftest import REPO, run_cli
from test_server import free_port, require, start_mlflow_server, stop_mlflow_server

SCRIPT = REPO / "scripts" / "ui_screenshot.py"


def test_mlflow_ui_lists_the_sweep_runs(tmp_path, capsys):
    require(bool(shutil.which("chromium") or shutil.which("chromium-browser")),
            "Chromium is not installed (apt-get install chromium chromium-driver)")
    require(bool(shutil.which("chromedriver")), "chromedriver is not installed (apt-get install chromium-driver)")
    require(importlib.util.find_spec("selenium") is not None, "selenium is not installed (pip install selenium)")
    root, sweep = tmp_path / "outputs", tmp_path / "multirun" / "ui"
    # a real sweep (Hydra's basic launcher: the jobs one after another) into the local store
    r = run_cli(["-m", "task=evaluate", "task.num_archs=3", "metric.names=[mmacs]", "space=mbv3,pn", "seed=0,1",
                 f"paths.output_root={root}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    srv = start_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts", free_port(),
                              tmp_path / "server.log")
    try:
        t0 = time.monotonic()
        shot = tmp_path / "mlflow_ui.png"
        r = subprocess.run([sys.executable, str(SCRIPT), "--url", srv.uri, "--sweep", str(sweep),
                            "--out", str(shot), "--timeout", "120"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        assert "found 4 of 4 runs in the UI" in r.stdout
        assert "runs?workflowType=machine_learning&searchFilter=tags.sweep" in r.stdout
        img = Image.open(shot)
        assert img.format == "PNG" and img.size[0] >= 1200
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # a rendered page, not a blank one
        with capsys.disabled():  # shown in the test output even when pytest captures it
            print(f"\nMLflow UI screenshot ({time.monotonic() - t0:.1f} s in Chromium): {shot}")
        # a sweep without runs is one clear line, before any browser starts
        r = subprocess.run([sys.executable, str(SCRIPT), "--url", srv.uri, "--sweep", "no-such-sweep",
                            "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "no runs with tags.sweep = 'no-such-sweep'" in r.stderr
    finally:
        stop_mlflow_server(srv)
