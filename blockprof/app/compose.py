"""Compose a run config without the command line (the Python API, tests, benchmarks)."""
from __future__ import annotations

from omegaconf import DictConfig


def compose(overrides: list[str] | tuple[str, ...] = (), config_dir: str | None = None) -> DictConfig:
    """The config `python run.py <overrides>` would run: the packaged conf/ (or `config_dir`,
    searched first, for a user's own groups such as a device), validated by the schemas.
    A device whose name is not its option is refused here, as on the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from blockprof.app.device import check_identity
    from blockprof.app.schema import register

    register()
    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    with initialize_config_module(config_module="blockprof.conf", version_base="1.3"):
        # the hydra node carries the chosen options (the device's identity); the run config does not keep it
        cfg = hydra_compose("config", overrides=[*overrides, *extra], return_hydra_config=True)
    choice = cfg.hydra.runtime.choices.get("device")
    with open_dict(cfg):
        del cfg["hydra"]
    check_identity(cfg, choice, overrides)
    return cfg
