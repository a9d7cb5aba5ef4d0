"""The task contract: what `task._target_` names.

A task declares what the app used to find by `getattr`: whether it needs the metric set
built before it starts (`needs_metrics`, from its config), the config groups it reads
(only those are logged to MLflow), its own checks (`validate`, run before the run folder
is used and before the MLflow run opens) and the float a sweeper optimises (`objective`).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from omegaconf import OmegaConf

from blockprof.common.plugins import register_schema

# name -> class of the tasks that carry their own schema (`Config`); the built-in tasks'
# schemas live in blockprof.app.schema (TASK_SCHEMAS), so `--help` never imports torch
TASKS: dict[str, type] = {}


class Task(ABC):
    """A subclass with a `Config` (a dataclass with `name` and its options' defaults, based
    on `blockprof.app.schema.TaskConfig`) registers itself when its module is imported:
    `schema/task/<name>` in Hydra's ConfigStore, `_target_` set to the class."""
    #: config groups this task reads besides `task` (logged as MLflow params)
    groups: tuple[str, ...] = ("space", "device", "metric")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_schema("task", cls, TASKS)

    def __init__(self, cfg) -> None:
        config = getattr(type(self), "Config", None)
        if config is not None and OmegaConf.get_type(cfg) is not config:
            # composed from a YAML that names only `_target_` (the module was not imported
            # when Hydra composed): the schema's defaults and checks apply here, still
            # before any run folder exists
            cfg = OmegaConf.merge(OmegaConf.structured(config), cfg)
        self.cfg = cfg  # the `task` node

    @property
    def needs_metrics(self) -> bool:
        return bool(self.cfg.needs_metrics)

    def validate(self, ctx) -> None:
        """Raise UserError for anything the config, files or combination get wrong."""

    @abstractmethod
    def run(self, ctx, tracker) -> Any:
        """Do the work; files go to `ctx.run_dir`, results through `tracker`."""

    def objective_value(self, result: Any) -> float | None:
        """`task.objective` read from the task's result (a dict of floats), or None."""
        name = self.cfg.get("objective")
        if not name or not isinstance(result, dict) or name not in result:
            return None
        value = float(result[name])
        return value if math.isfinite(value) else None
