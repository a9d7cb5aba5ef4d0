"""The `blockprof.plugins` entry point: importing this module registers everything."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# a Strategy / Task subclass stores its own schema when its module is imported
from bp_example import strategy, task  # noqa: F401

# group options (space/, device/, search/, task/) that join blockprof's own
config_path = "pkg://bp_example.conf"

HERE = Path(__file__).resolve().parent


def register() -> None:
    # lets the device YAML name the table shipped inside this package, wherever it is installed
    OmegaConf.register_new_resolver("bp_example.file", lambda rel: str(HERE / rel), replace=True)
