"""blockprof: profile neural blocks and design spaces for mobile NAS.

A small Python API over the same code the command line runs::

    import blockprof

    space = blockprof.build_space("mbv3")                       # OFA-MobileNetV3 w1.2
    archs = space.sample(numpy.random.default_rng(0), 100)      # hashable Arch values
    cfg = blockprof.compose(["space=mbv3", "device=note10"])    # the config `python run.py ...` would run
    scores = blockprof.score(cfg, archs)                        # {"accuracy": array, "latency": array, ...}
    result = blockprof.run(cfg)                                 # run cfg's task (profile, search, ...)

Every bad input raises ``blockprof.UserError`` (one line, as the command line prints).
Names are imported on first use, so ``import blockprof`` stays fast.
"""
from __future__ import annotations

import importlib as _importlib

__all__ = ["Arch", "DesignSpace", "UserError", "build_space", "compose", "metrics_for", "run", "score"]
__version__ = "0.1.0"

_LAZY = {
    "Arch": "blockprof.core.space",
    "DesignSpace": "blockprof.core.space",
    "build_space": "blockprof.core.registry",
    "UserError": "blockprof.common.errors",
    "compose": "blockprof.app.compose",
    "metrics_for": "blockprof.app.api",
    "score": "blockprof.app.api",
    "run": "blockprof.app.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups (and help()) find it directly
        return value
    raise AttributeError(f"module 'blockprof' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (tab completion, dir(blockprof)), not the module's machinery."""
    return sorted([*__all__, "__version__"])
