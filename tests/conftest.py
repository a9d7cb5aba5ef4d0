"""Shared fixtures: the asset mirror, composed configs, tiny run folders."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_ASSETS = REPO.parent / "shared" / "assets"

# tests never download: the OFA assets come from the local mirror (CI sets the same)
os.environ.setdefault("BLOCKPROF_ASSET_MIRROR", str(SHARED_ASSETS))
# ...and never write into the user's cache
os.environ.setdefault("BLOCKPROF_CACHE", tempfile.mkdtemp(prefix="blockprof-test-cache-"))
# ...and never fetch the seed's latency CSVs from the network: an empty stand-in folder
os.environ.setdefault("BLOCKPROF_SEED_DATA", tempfile.mkdtemp(prefix="blockprof-test-seed-data-"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: kills, races and other multi-process cases (run with -m slow)")


def compose(overrides: list[str], output_root: Path):
    """A real Hydra composition of conf/ (no app run), pointed at a tmp output root."""
    from blockprof.app.compose import compose as compose_config

    return compose_config([*overrides, f"paths.output_root={output_root}"])


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python run.py ...` in a subprocess, from `cwd`."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: compose(list(overrides), tmp_path / "outputs")


def synthetic_latency(space, n: int, seed: int):
    """(archs, latency ms) with a known truth: the Note10 lookup-table latency of `n` seeded
    archs, a non-additive depth term and 2 % noise (real layers, a target no model fits exactly)."""
    import numpy as np

    from blockprof.metrics.lut import note10_latency
    rng = np.random.default_rng(seed)
    archs = space.sample(rng, n)
    lut = note10_latency(space).evaluate(archs)
    depth = np.array([sum(a.depths) for a in archs])
    return archs, lut * (1 + 0.01 * (depth - 15)) * rng.normal(1, 0.02, n)


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core box, 2 threads run small nets several times slower."""
    import torch
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
