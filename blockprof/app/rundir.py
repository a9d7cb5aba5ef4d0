"""Where a run's files go."""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from blockprof.infra.tracking import resolve_output_root


def default_run_dir(cfg: DictConfig) -> Path:
    """`<output_root>/runs/<task>/<space>-<device>/<time>`: the folder `hydra.run.dir` names
    for a command-line run (microseconds: two runs started together never share one)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now)) + f"-{int(now * 1e6) % 1_000_000:06d}"
    return resolve_output_root(cfg) / "runs" / str(cfg.task.name) / f"{cfg.space.name}-{cfg.device.name}" / stamp


def run_dir_of(cfg: DictConfig, create: bool = False) -> Path:
    """The run's folder: Hydra's job folder, or (the Python API, tests) the same layout as a
    command-line run; created only with `create` (a run refused on bad input leaves none)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # composed outside a Hydra app
        path = default_run_dir(cfg)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path
