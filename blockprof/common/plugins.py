"""Packages outside blockprof that add spaces, devices, engines, strategies and tasks.

A package declares one entry point in the `blockprof.plugins` group, naming a module:

    [project.entry-points."blockprof.plugins"]
    theirs = "theirpkg.blockprof_plugin"

Importing that module is the registration: a `Strategy` or `Task` subclass defined (or
imported) there stores its schema in Hydra's ConfigStore as built-ins do. The module may
also define

- `config_path = "pkg://theirpkg.conf"`: a config folder whose group options
  (`space/<name>.yaml`, `device/<name>.yaml`, `search/...`, `task/...`) join blockprof's own,
  so they are listed in `--help` and in "unknown ... (choose from ...)" errors;
- `register()`: called once after the import, for anything else (OmegaConf resolvers).

Discovery reads the installed distributions' metadata once per process (no plugin is
imported twice); a plugin that fails to import is a user error naming it, not a traceback.
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from blockprof.common.errors import UserError

log = logging.getLogger(__name__)

GROUP = "blockprof.plugins"


@dataclass(frozen=True)
class Plugin:
    name: str                  # the entry point's name
    module: str                # the module it names
    config_path: str | None    # `pkg://<package>` or `file://<folder>`: extra config group options


_loaded: tuple[Plugin, ...] | None = None


def _load(ep: importlib.metadata.EntryPoint) -> Plugin:
    try:
        obj = ep.load()
        register = getattr(obj, "register", None)
        if callable(register):
            register()
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party package is its own, not ours
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"plugin '{ep.name}' ({ep.value}) failed to load: {type(exc).__name__}: {first}") from exc
    path = getattr(obj, "config_path", None)
    if path is not None and not (isinstance(path, str) and path.startswith(("pkg://", "file://"))):
        raise UserError(f"plugin '{ep.name}': config_path must be 'pkg://<package>' or 'file://<folder>', not {path!r}")
    module = obj.__name__ if isinstance(obj, ModuleType) else ep.value
    return Plugin(name=ep.name, module=module, config_path=path)


def load_plugins() -> tuple[Plugin, ...]:
    """Import every installed plugin once (in entry-point name order, so runs are repeatable)."""
    global _loaded
    if _loaded is None:
        eps = sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name)
        plugins, seen = [], set()
        for ep in eps:
            if ep.name in seen:  # the same distribution on sys.path twice
                continue
            seen.add(ep.name)
            plugins.append(_load(ep))
            log.debug("plugin %s loaded from %s", ep.name, ep.value)
        _loaded = tuple(plugins)
    return _loaded


def config_paths() -> list[str]:
    """The config search-path entries the plugins add, in load order."""
    return [p.config_path for p in load_plugins() if p.config_path]


def _folders() -> list:
    """The plugins' config folders that exist, in load order."""
    out = []
    for path in config_paths():
        scheme, _, where = path.partition("://")
        if scheme == "pkg":
            try:
                out.append(importlib.resources.files(where))
            except ModuleNotFoundError:
                log.warning("plugin config package %s is not importable", where)
        else:
            out.append(Path(where))
    return out


def config_file(group: str, name: str):
    """`<group>/<name>.yaml` from a plugin's config folder (the first that has it), or None."""
    for folder in _folders():
        candidate = folder / group / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def config_names(group: str) -> list[str]:
    """The option names plugins add to a config group."""
    out = set()
    for folder in _folders():
        sub = folder / group
        if sub.is_dir():
            out.update(p.name[:-5] for p in sub.iterdir() if p.name.endswith(".yaml"))
    return sorted(out)


def register_schema(group: str, cls: type, registry: dict) -> str | None:
    """Store `cls.Config` (a dataclass schema) as `schema/<group>/<name>` in Hydra's
    ConfigStore and `cls` under that name in `registry`; called from a base class's
    `__init_subclass__`, so a class registers where it is defined. The name is the
    schema's `name` default; `_target_` is set to `cls` (a subclass that reuses its
    parent's schema need not repeat it). A class without its own `Config` registers nothing."""
    config = cls.__dict__.get("Config")
    if config is None:
        return None
    name = getattr(config, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__}.Config needs a `name: str = \"<name>\"` default")
    target = f"{cls.__module__}.{cls.__qualname__}"
    old = registry.get(name)
    if old is not None and f"{old.__module__}.{old.__qualname__}" != target:
        raise UserError(f"two {group} classes are named '{name}': {old.__module__}.{old.__qualname__} and {target}")
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(config)
    node._target_ = target
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=node)
    registry[name] = cls
    return name


def _search_path_plugin():
    """A Hydra SearchPathPlugin that appends the plugins' config folders after blockprof's
    own (and after `--config-dir`), so a plugin adds group options but never replaces one."""
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class BlockprofPluginSearchPath(SearchPathPlugin):
        def manipulate_search_path(self, search_path) -> None:
            for path in config_paths():
                search_path.append(provider="blockprof-plugin", path=path)

    return BlockprofPluginSearchPath


_search_path_registered = False


def add_config_search_path() -> None:
    """Let Hydra see the plugins' config folders (a no-op without any)."""
    global _search_path_registered
    if _search_path_registered or not config_paths():
        return
    from hydra.core.plugins import Plugins

    Plugins.instance().register(_search_path_plugin())
    _search_path_registered = True
