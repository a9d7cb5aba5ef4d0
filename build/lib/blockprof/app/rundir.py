"""Where a run's files go."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from blockprof.infra.tracking import resolve_output_root


def run_dir_of(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # composed outside a Hydra app (tests, the Python API): a fresh folder under output_root
        import tempfile
        root = resolve_output_root(cfg) / "runs" / str(cfg.task.name)
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=root))
