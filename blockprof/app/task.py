"""The task contract: what `task._target_` names.

A task declares what the app used to find by `getattr`: whether it needs the metric set
built before it starts (`needs_metrics`, from its config), the config groups it reads,
what it logs as MLflow params and tags (`params`, `tags`: what the run used and what was
true for it, not the whole composed config), its own checks (`validate`, run before the run
folder is used and before the MLflow run opens) and the float a sweeper optimises
(`objective`).
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

# keys of metric.accuracy each source reads (the rest belong to the other source)
ACCURACY_KEYS = {"predictor": ("source", "checkpoint", "checkpoint_dir"),
                 "supernet": ("source", "calib_images", "calib_batch_size", "batch_size", "eval_subset", "seed",
                              "device", "threads", "archs_per_pass", "memo", "allow_pickle", "checkpoint_dir")}
# keys of device.latency each source reads; the cost scale (`hv_reference`, `cost_limits`)
# only matters to a search, which logs the values it used
LATENCY_KEYS = {"lut": ("source", "table", "format", "transfer"),
                "predictor": ("source", "csv", "checkpoint", "model", "train")}
_COST_SCALE = ("hv_reference", "cost_limits")
_TASK_KEYS_NEVER = ("_target_", "name", "needs_metrics")


def flat(node: Any, prefix: str) -> dict[str, Any]:
    """{"a.b": value} of a config node (resolved; lists stay one value; None and empty
    dicts left out: a param says what was set)."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                continue
            out.update(flat(v, f"{prefix}.{k}"))
    elif node is not None:
        out[prefix] = node
    return out


def pick(node, prefix: str, keys) -> dict[str, Any]:
    """The params of `keys` of a config node (those that are set)."""
    out: dict[str, Any] = {}
    for k in keys:
        if k in node:
            out.update(flat(node[k], f"{prefix}.{k}"))
    return out


class Task(ABC):
    """A subclass with a `Config` (a dataclass with `name` and its options' defaults, based
    on `blockprof.app.schema.TaskConfig`) registers itself when its module is imported:
    `schema/task/<name>` in Hydra's ConfigStore, `_target_` set to the class."""
    #: config groups this task reads besides `task` (logged as MLflow params)
    groups: tuple[str, ...] = ("space", "device", "metric")
    #: keys of `task` not logged as params (the task logs what it used instead, e.g. under protocol.*)
    unlogged_task_keys: tuple[str, ...] = ()

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

    def complete_config(self, cfg):
        """The run's config, completed from the task's inputs before the space and metrics are
        built (merge_profile takes its shards' settings); by default `cfg` as it is."""
        return cfg

    def validate(self, ctx) -> None:
        """Raise UserError for anything the config, files or combination get wrong."""

    @abstractmethod
    def run(self, ctx, tracker) -> Any:
        """Do the work; files go to `ctx.run_dir`, results through `tracker`."""

    def scored_metrics(self, ctx) -> list[str]:
        """The metrics this run scores (after `skip_unavailable` dropped any), [] when it scores none."""
        return list(ctx.metrics) if self.needs_metrics else []

    def params(self, ctx) -> dict[str, Any]:
        """MLflow params: the settings this run used, flat (`space.name`, `task.num_archs`):
        the space, the device's latency source and the accuracy source only when their metric is
        scored, the task's own keys. Called after `validate`, before the run opens."""
        cfg = ctx.cfg
        scored = self.scored_metrics(ctx)
        out: dict[str, Any] = {"seed": cfg.seed}
        if "space" in self.groups:
            out.update(pick(cfg.space, "space", ("name", "width_mult", "resolutions")))
        if "device" in self.groups:
            out["device.name"] = cfg.device.name
            if "latency" in scored:
                out.update(self.latency_params(ctx))
        if "metric" in self.groups and scored:
            out["metric.names"] = scored
            acc = cfg.metric.accuracy
            if "accuracy" in scored:
                out.update(pick(acc, "metric.accuracy", ACCURACY_KEYS.get(str(acc.source), tuple(acc.keys()))))
                if str(acc.source) == "supernet":
                    out.update(flat(cfg.get("data"), "data"))
        if "search" in self.groups:
            out.update(flat(cfg.search, "search"))
        out.update(flat({k: v for k, v in OmegaConf.to_container(self.cfg, resolve=True).items()
                         if k not in _TASK_KEYS_NEVER and k not in self.unlogged_task_keys}, "task"))
        return out

    def latency_params(self, ctx) -> dict[str, Any]:
        lat = ctx.cfg.device.latency
        keys = LATENCY_KEYS.get(str(lat.source), tuple(k for k in lat.keys() if k not in _COST_SCALE))
        return pick(lat, "device.latency", keys)

    def tags(self, ctx) -> dict[str, Any]:
        """MLflow tags that say what was true for the run (task, space, device and commit are
        added by the tracker): the metrics it scored."""
        scored = self.scored_metrics(ctx)
        return {"metrics": ",".join(scored)} if scored else {}

    def objective_value(self, result: Any) -> float | None:
        """`task.objective` read from the task's result (a dict of floats), or None."""
        name = self.cfg.get("objective")
        if not name or not isinstance(result, dict) or name not in result:
            return None
        value = float(result[name])
        return value if math.isfinite(value) else None
