"""The package as users get it: a wheel with its configs, one top-level name, the console
script working from any folder; the layered import contract."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # build from a copy of the tracked sources: pip builds in the source folder, and a
    # build/ left in the checkout would both pollute it and leak stale files into wheels
    src = tmp_path_factory.mktemp("src") / "blockprof"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if rel.startswith(("tests/", "scripts/", "docs/")):
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("blockprof-*.whl")
    return whl


def test_wheel_ships_configs_under_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"blockprof"}, top
    for f in ("blockprof/conf/config.yaml", "blockprof/conf/device/note10.yaml", "blockprof/conf/insight/mbv3.yaml",
              "blockprof/conf/hparams_search/rm_pareto_hv.yaml", "blockprof/search/strategies.py",
              "blockprof/predictors/train.py"):
        assert f in names, f


def test_wheel_in_a_fresh_environment_runs_from_another_folder(wheel, tmp_path):
    """A new venv holding only the wheel (its dependencies are reached through a .pth file
    to this environment's site-packages, since there is no network to fetch them)."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run([str(py), "-c", "import blockprof.conf as c; print(c.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env)
    assert str(env_dir) in where.stdout, (where.stdout, where.stderr)  # the wheel's copy, not the checkout
    exe = env_dir / "bin" / "blockprof"
    job = subprocess.run([str(exe), "--cfg", "job"], cwd=elsewhere, capture_output=True, text=True, env=env,
                         timeout=300)
    assert job.returncode == 0, job.stderr
    assert "name: profile" in job.stdout and "name: note10" in job.stdout
    run = subprocess.run([str(exe), "debug=one_slot", "tracking=none", "paths.output_root=out"], cwd=elsewhere,
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert list((elsewhere / "out" / "runs" / "profile").glob("*/*/summary.csv"))
    assert not (elsewhere / "conf").exists()


def test_import_layers_hold():
    """`lint-imports` checks the layers contract in setup.cfg (app -> infra -> search ->
    predictors -> metrics -> core -> common)."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    res = subprocess.run([exe, "--config", str(REPO / "setup.cfg")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KEPT" in res.stdout and "BROKEN" not in res.stdout


def test_no_import_cycles():
    import grimp

    graph = grimp.build_graph("blockprof")
    modules = sorted(graph.modules)
    cycles = []
    for m in modules:
        for other in graph.find_modules_directly_imported_by(m):
            if other != m and graph.chain_exists(importer=other, imported=m):
                cycles.append((m, other))
    assert not cycles, cycles[:5]
