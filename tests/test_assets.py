"""Asset resolution against the local mirror (no network)."""

import os
import shutil
from pathlib import Path

import pytest

from blockprof.common import assets
from blockprof.common.assets import ASSETS, load_torch_asset, load_yaml_asset, resolve_asset
from blockprof.common.errors import UserError

MIRROR = Path(os.environ.get("BLOCKPROF_ASSET_MIRROR")
              or Path(__file__).resolve().parents[1].parent / "shared" / "assets")
TABLE = "ofa/note10/224_lookup_table.yaml"


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    if not (MIRROR / TABLE).is_file():
        pytest.skip(f"asset mirror not found at {MIRROR}")
    monkeypatch.setenv("BLOCKPROF_ASSET_MIRROR", str(MIRROR))
    monkeypatch.setenv("BLOCKPROF_CACHE", str(tmp_path / "cache"))  # empty: never the user's cache
    return MIRROR


def test_registry_matches_sha256sums(mirror):
    sums = {}
    for line in (mirror / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        sums[rel.removeprefix("./")] = digest
    assert {k: a.sha256 for k, a in ASSETS.items()} == sums
    assert ASSETS["ofa/acc_predictor.pth"].url == (
        "https://raw.githubusercontent.com/han-cai/files/master/ofa/acc_predictor.pth")


def test_mirror_used_in_place_and_loaders(mirror, tmp_path):
    assert resolve_asset(TABLE) == mirror / TABLE
    assert not (tmp_path / "cache").exists()  # mirror files are not copied
    table = load_yaml_asset(TABLE)
    assert any(k.startswith("expanded_conv-") for k in table)
    assert load_yaml_asset(TABLE) is table  # parsed once per process
    state = load_torch_asset("ofa/acc_predictor.pth")
    assert all(t.device.type == "cpu" for t in state.values())


def test_cache_preferred_over_mirror(mirror, tmp_path):
    cached = tmp_path / "cache" / TABLE
    cached.parent.mkdir(parents=True)
    shutil.copy(mirror / TABLE, cached)
    assert resolve_asset(TABLE) == cached
    other = tmp_path / "other"
    (other / TABLE).parent.mkdir(parents=True)
    shutil.copy(mirror / TABLE, other / TABLE)
    assert resolve_asset(TABLE, cache_dir=str(other)) == other / TABLE


def test_explicit_path_checksum_mismatch(mirror, tmp_path):
    bad = tmp_path / "table.yaml"
    shutil.copy(mirror / TABLE, bad)
    assert resolve_asset(TABLE, explicit_path=str(bad)) == bad
    with open(bad, "a") as f:
        f.write("# corrupted\n")
    with pytest.raises(UserError, match="checksum mismatch") as e:
        resolve_asset(TABLE, explicit_path=str(bad))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        resolve_asset(TABLE, explicit_path=str(tmp_path / "missing.yaml"))


def test_unknown_asset():
    with pytest.raises(UserError, match="unknown asset"):
        resolve_asset("ofa/nope.pth")


def test_missing_everywhere(monkeypatch, tmp_path):
    monkeypatch.delenv("BLOCKPROF_ASSET_MIRROR", raising=False)
    cache = tmp_path / "empty-cache"
    # The real urllib download runs, but against a file:// URL that does not exist
    # (fails at once, no network).
    url = (tmp_path / "no-such-dir" / "224_lookup_table.yaml").as_uri()
    monkeypatch.setitem(ASSETS, TABLE, assets.Asset(TABLE, ASSETS[TABLE].sha256, url))
    with pytest.raises(UserError) as e:
        resolve_asset(TABLE, cache_dir=str(cache))
    msg = str(e.value)
    assert "\n" not in msg
    assert TABLE in msg and url in msg and str(cache / TABLE) in msg
    assert "BLOCKPROF_ASSET_MIRROR" in msg
    assert not (cache / TABLE).exists() and not list(cache.rglob("*.part"))


def test_download_verified_and_atomic(monkeypatch, tmp_path):
    """A file:// "download" lands in the cache only if its checksum matches."""
    if not (MIRROR / TABLE).is_file():
        pytest.skip(f"asset mirror not found at {MIRROR}")
    monkeypatch.delenv("BLOCKPROF_ASSET_MIRROR", raising=False)
    good = assets.Asset(TABLE, ASSETS[TABLE].sha256, (MIRROR / TABLE).as_uri())
    monkeypatch.setitem(ASSETS, TABLE, good)
    cache = tmp_path / "cache"
    assert resolve_asset(TABLE, cache_dir=str(cache)) == cache / TABLE
    assert (cache / TABLE).read_bytes() == (MIRROR / TABLE).read_bytes()

    wrong = assets.Asset(TABLE, "0" * 64, (MIRROR / TABLE).as_uri())
    monkeypatch.setitem(ASSETS, TABLE, wrong)
    with pytest.raises(UserError, match="wrong checksum"):
        resolve_asset(TABLE, cache_dir=str(tmp_path / "cache2"))
    assert not [p for p in (tmp_path / "cache2").rglob("*") if p.is_file()]  # no bad or partial file
