"""Public asset files (OFA predictors, latency lookup tables): find, verify, load.

Resolution order: an explicit path from the config -> the project cache -> a
local mirror named by ``$BLOCKPROF_ASSET_MIRROR`` (used in place) -> download
from the official URL into the cache. Every file is checked against its SHA-256
before use; nothing is ever loaded unverified. A damaged cached copy is dropped
and replaced from the mirror or the official URL; a damaged configured or mirror
file is an error (they are the user's).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.common.fileio import sha256_file

logger = logging.getLogger(__name__)

URL_BASE = "https://raw.githubusercontent.com/han-cai/files/master/"
MIRROR_ENV = "BLOCKPROF_ASSET_MIRROR"
CACHE_ENV = "BLOCKPROF_CACHE"
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Asset:
    relpath: str
    sha256: str
    url: str


_SUMS = {  # SHA-256 of the files OFA and ProxylessNAS published
    "ofa/acc_predictor.pth": "48685122a3540636b06699af66cd816456b25f29b69563e2fda9bed4018eeba0",
    "ofa/note10/160_lookup_table.yaml": "a2671a45e9400542679ed03de946b45d6a35010f9ab21834af3e7ba8341d36d1",
    "ofa/note10/176_lookup_table.yaml": "34223ae037d5719a5f33261bdfd9341f590a2999edf520f174309605dc06307c",
    "ofa/note10/192_lookup_table.yaml": "0ff5ca0649e56ad34a42d6a8a6f20adb5121c8d12d135299397b310472db79e2",
    "ofa/note10/208_lookup_table.yaml": "41aa63af766a8298354e6aa5ae69d512ac68656a6e7d0a4fa5dc725c8d438633",
    "ofa/note10/224_lookup_table.yaml": "c13a9bcb3f4becae844bce4897129c4e42975984c1029cbd5acb48c970136530",
    "ofa/ofa_resnet50_acc_predictor.pth": "68912b4b4be38feb504c5b773dc847af23a637984d5eaabf548de72cd0f79529",
    "proxylessnas/mobile_trim.yaml": "087e855ea77f9b257e72f3637333a3e0938f6df77f579520f16d057ac45380aa",
}
ASSETS: dict[str, Asset] = {p: Asset(p, s, URL_BASE + p) for p, s in _SUMS.items()}


def default_cache_dir() -> Path:
    """``$BLOCKPROF_CACHE`` or ``~/.cache/blockprof`` (not created here)."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/blockprof").expanduser()


# Files already verified in this process, keyed on (path, size, mtime): tables are
# resolved many times per run, and re-hashing them each time is wasted work.
_verified: set[tuple[str, int, int]] = set()


def _verify(path: Path, asset: Asset, origin: str) -> Path:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        if sha256_file(path) != asset.sha256:
            raise UserError(
                f"asset {asset.relpath}: checksum mismatch in {origin} file {path} "
                f"(expected sha256 {asset.sha256}); delete or replace it with {asset.url}"
            )
        _verified.add(key)
    return path


def _download(asset: Asset, dest: Path) -> None:
    """Fetch ``asset.url`` into ``dest`` atomically; only a verified file lands there."""
    # the cache folders this call makes, deepest first: removed again if the download fails,
    # so a missing asset leaves no empty folders behind
    made = list(itertools.takewhile(lambda p: not p.exists(), [dest.parent, *dest.parent.parents]))
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError:
        _remove_empty(made)
        raise
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(asset.url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
        if h.hexdigest() != asset.sha256:
            raise UserError(
                f"asset {asset.relpath}: download from {asset.url} has the wrong checksum "
                f"(expected sha256 {asset.sha256}); try again or place the file by hand at {dest}"
            )
        os.replace(tmp, dest)
        done = True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if not done:
            _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            break


def resolve_asset(relpath: str, explicit_path: str | None = None, cache_dir: str | None = None) -> Path:
    """Return a verified local path for the asset ``relpath`` (see module docstring)."""
    relpath = relpath.removeprefix("./")
    asset = ASSETS.get(relpath)
    if asset is None:
        raise UserError(f"unknown asset {relpath!r}; known assets: {', '.join(sorted(ASSETS))}")

    if explicit_path:  # set in the config: it must be right, no silent fallback
        p = Path(explicit_path).expanduser()
        if not p.is_file():
            raise UserError(f"asset {relpath}: configured path {p} does not exist (official copy: {asset.url})")
        return _verify(p, asset, "configured")

    cached = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / relpath
    if cached.is_file():
        try:
            return _verify(cached, asset, "cached")
        except UserError:  # our own copy, damaged (a cut download, a disk error): fetch it again
            logger.warning("asset %s: cached file %s fails its checksum; removed, using the mirror or "
                           "downloading it again", relpath, cached)
            try:
                cached.unlink()
            except OSError:
                pass

    mirror = os.environ.get(MIRROR_ENV)
    if mirror and (Path(mirror).expanduser() / relpath).is_file():
        return _verify(Path(mirror).expanduser() / relpath, asset, "mirror")

    try:
        _download(asset, cached)
    except UserError:
        raise
    except Exception as e:  # network down, HTTP error, unwritable cache, ...
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise UserError(
            f"asset {relpath} not found and download failed ({reason}); download {asset.url} "
            f"and place it at {cached}, or set {MIRROR_ENV} to a folder holding {relpath}"
        ) from None
    return _verify(cached, asset, "downloaded")


def load_torch_asset(relpath: str, **kw):
    """Load a ``.pth`` asset as plain tensors (``weights_only``; CPU: some were saved on CUDA)."""
    import torch

    return torch.load(resolve_asset(relpath, **kw), weights_only=True, map_location="cpu")


@functools.lru_cache(maxsize=None)
def _load_yaml(path: str):
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C loader when libyaml is present
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def load_yaml_asset(relpath: str, **kw):
    """Load a YAML asset (cached per resolved path; the result is shared: do not mutate it)."""
    return _load_yaml(str(resolve_asset(relpath, **kw)))
