"""Compose a run config without the command line (the Python API, tests, benchmarks)."""
from __future__ import annotations

import weakref

from omegaconf import DictConfig

from blockprof.common.errors import UserError

# the overrides each composed config was made from (by id, with a weak reference that tells a
# reused id apart): what a task may treat as the caller's explicit choices, as Hydra's
# `overrides.task` is on the command line
_OVERRIDES: dict[int, tuple[weakref.ref, list[str]]] = {}


def overrides_of(cfg) -> list[str] | None:
    """The overrides `compose` made `cfg` from, or None for a config it did not make."""
    hit = _OVERRIDES.get(id(cfg))
    return hit[1] if hit is not None and hit[0]() is cfg else None


def compose(overrides: list[str] | tuple[str, ...] = (), config_dir: str | None = None) -> DictConfig:
    """The config ``python run.py <overrides>`` would run.

    ``overrides``: the command line's ``key=value`` / ``group=option`` items, e.g.
    ``["space=mbv3", "device=note10", "task=search", "search.budget=500"]``.
    ``config_dir``: a folder of your own config groups (a device, say), searched before the
    packaged ``conf/``. The result is validated by the schemas: a wrong key, type or option
    raises :class:`blockprof.UserError` with the one line the command line would print; a
    device whose name is not its option is refused, as on the command line.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from blockprof.app.device import check_identity
    from blockprof.app.errors import one_line_user_error
    from blockprof.app.schema import register

    if isinstance(overrides, str):
        raise UserError(f"compose takes a list of overrides, e.g. compose([{overrides!r}]), not a string")
    register()
    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    try:
        with initialize_config_module(config_module="blockprof.conf", version_base="1.3"):
            # the hydra node carries the chosen options (the device's identity); the run config does not keep it
            cfg = hydra_compose("config", overrides=[*map(str, overrides), *extra], return_hydra_config=True)
    except Exception as exc:  # Hydra's composition errors are the caller's to fix: one line, as on the command line
        line = one_line_user_error(exc)
        if line is None:
            raise
        raise UserError(line) from None
    finally:
        GlobalHydra.instance().clear()
    choice = cfg.hydra.runtime.choices.get("device")
    with open_dict(cfg):
        del cfg["hydra"]
    check_identity(cfg, choice, overrides)
    for key in [k for k, (ref, _) in _OVERRIDES.items() if ref() is None]:
        del _OVERRIDES[key]
    _OVERRIDES[id(cfg)] = (weakref.ref(cfg), [str(o) for o in overrides])
    return cfg
