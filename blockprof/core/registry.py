"""Spaces by name: `build_space("mbv3")` reads the packaged `conf/space/<name>.yaml`, whose
`_target_` names the family class (or `family:` a registered family's short name); a
name no packaged file has is looked up in the plugins' config folders."""
from __future__ import annotations

import importlib
import importlib.resources
from typing import Sequence

import yaml

import blockprof.core.families  # noqa: F401 - registers the built-in families
from blockprof.common import plugins
from blockprof.common.errors import UserError
from blockprof.core.space import FAMILIES, DesignSpace


def _space_file(name: str):
    """The packaged `conf/space/<name>.yaml`, else a plugin's (see blockprof.common.plugins)."""
    path = importlib.resources.files("blockprof.conf") / "space" / f"{name}.yaml"
    if path.is_file():
        return path
    return plugins.config_file("space", name) or path


def _family_class(target: str | None, family: str | None, where: str) -> type[DesignSpace]:
    if target and target != f"{__name__}.build_space":
        mod, _, attr = str(target).rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError):
            raise UserError(f"{where}: _target_ '{target}' names no importable class") from None
        if not (isinstance(cls, type) and issubclass(cls, DesignSpace)):
            raise UserError(f"{where}: _target_ '{target}' is not a design space class")
        return cls
    if family in FAMILIES:
        return FAMILIES[family]
    raise UserError(f"{where} names no space family (give `_target_: <family class>` or "
                    f"`family:` one of {sorted(FAMILIES)})")


def available_spaces() -> list[str]:
    """Names of the spaces shipped as YAML files, and those plugins add."""
    folder = importlib.resources.files("blockprof.conf") / "space"
    names = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")}
    return sorted(names | set(plugins.config_names("space")))


def build_space(name: str, resolutions: Sequence[int] | None = None, width_mult: float | None = None,
                family: str | None = None, **params) -> DesignSpace:
    """A space by name: its YAML under `conf/space/` gives the family class (`_target_`,
    or `family`) and the family's parameters; arguments given here override them."""
    name = str(name)
    spec: dict = {}
    path = _space_file(name)
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        spec = {k: v for k, v in loaded.items() if k != "defaults"}
    elif family is None:
        raise UserError(f"unknown space '{name}' (choose from {', '.join(available_spaces())})")
    target = spec.pop("_target_", None)
    spec.pop("name", None)
    spec_family = spec.pop("family", None)
    cls = _family_class(target, family or spec_family, f"space '{name}'")
    spec.update(params)
    if resolutions is not None:
        spec["resolutions"] = resolutions
    if width_mult is not None:
        spec["width_mult"] = width_mult
    try:
        return cls(name=name, **spec)
    except TypeError as exc:  # a key the family does not take
        raise UserError(f"space '{name}': {exc}") from None


def spaces_with(capability: str) -> list[str]:
    """Names of the shipped spaces that declare `capability` (a `Capabilities` field)."""
    out = []
    for name in available_spaces():
        try:
            space = build_space(name)
        except UserError:
            continue
        if getattr(space.capabilities, capability, None):
            out.append(name)
    return out
