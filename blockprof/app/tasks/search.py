"""task=search: predictor-guided search for the accuracy / cost Pareto front.

    python run.py task=search space=mbv3 device=note10                      # rm_pareto, full space
    python run.py task=search space=mbv3 device=note10 search.insight=note10
    python run.py task=search space=mbv3 search.insight=from_profile search.profile_run=<profile run folder or id>
    python run.py task=search space=resnet50 search=rm_cons_acc             # mmacs constraint (no latency source)
    python run.py task=search search=evolution search.constraint.latency=25
    python run.py task=search search=bands                                  # best arch under each of search.cost_limits

Objectives: `accuracy` (maximise) against `search.cost` (minimise), both from the
configured metrics. The budget counts unique archs scored and is the stopping rule
(`search.iterations`, when set, stops earlier). Every iteration is
checkpointed in the run folder; the same command on the same folder
(`hydra.run.dir=<folder>` or `task.resume_dir=<folder>`) continues a killed run.

Files in the run folder: scored.csv (every scored arch with its metrics), front.csv,
history.csv (the per-iteration measures also sent to MLflow), best.csv (constrained
strategies: their current top archs), insight_space.yaml, front.png.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import get_class, to_absolute_path
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write_text
from blockprof.core.families.mbconv import MBConvSpace
from blockprof.infra.tracking import fetch_run_csv
from blockprof.search.checkpoint import Checkpoint
from blockprof.search.evaluator import Evaluator
from blockprof.search.insight import load_insight
from blockprof.search.mutation import Mutator
from blockprof.search.pareto import non_dominated
from blockprof.search.runner import SearchRunner
from blockprof.search.strategies import ACCURACY, STRATEGIES, Strategy
from blockprof.app.task import Task

log = logging.getLogger(__name__)
COSTS = ("latency", "mmacs", "params_m")


def strategy_config(search_cfg) -> tuple[type[Strategy], object]:
    """The strategy class named by `search._target_` and its validated config."""
    target, name = search_cfg.get("_target_"), search_cfg.get("name")
    try:
        cls = get_class(str(target))
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Strategy) and cls is not Strategy):
        raise UserError(f"unknown search strategy '{name}' (_target_ {target}); choose from: {', '.join(sorted(STRATEGIES))}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.Config), search_cfg)
        return cls, OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        known = ", ".join(f.name for f in cls.Config.__dataclass_fields__.values() if not f.name.startswith("_"))
        raise UserError(f"unknown option search.{exc.full_key} for strategy {name} (options: {known})") from None
    except ValidationError as exc:
        raise UserError(f"search.{exc.full_key}: {str(exc.msg).splitlines()[0]}") from None


def objectives(ctx, cost: str) -> str:
    """Check the metric set has accuracy and the cost; resolve `auto`. One line when not."""
    metrics, cfg, space = ctx.metrics, ctx.cfg, ctx.space.name
    if ACCURACY not in metrics:
        if ACCURACY not in list(cfg.metric.names):
            raise UserError("search needs the accuracy metric: add it to metric.names (metric=default has it)")
        src = cfg.metric.accuracy.source
        raise UserError(f"search needs an accuracy metric, and space {space} has none from metric.accuracy.source={src} "
                        "(OFA published accuracy predictors only for mbv3 w1.2 and resnet50): "
                        f"set metric.accuracy.source=supernet (ImageNet + the OFA checkpoint) to search {space}")
    if cost == "auto":
        cost = "latency" if "latency" in metrics else "mmacs"
    if cost not in COSTS:
        raise UserError(f"search.cost '{cost}' is not a cost metric (choose from auto, {', '.join(COSTS)})")
    if cost not in metrics:
        raise UserError(f"search.cost={cost}, but this run's metrics are {', '.join(metrics)} "
                        f"(space {space}, device {cfg.device.name}); pick another search.cost or device")
    return cost


def fingerprint(cfg, profile_dict: dict) -> dict:
    """What must match for a checkpoint to be continued."""
    c = OmegaConf.to_container(cfg, resolve=True)
    task = {k: v for k, v in c.get("task", {}).items() if k not in ("resume_dir", "fsync")}
    return {"seed": c["seed"], "space": c["space"], "device": c["device"], "metric": c["metric"],
            "search": c["search"], "task": task, "insight": profile_dict}


def _clean(m: dict) -> dict:
    return {k: float(v) for k, v in m.items() if k != "iteration" and v is not None and math.isfinite(float(v))}


@dataclass
class Prepared:
    """Everything a search needs, built (and so checked) before the run folder is used."""
    cls: type
    scfg: object
    cost: str
    work: Path
    ckpt: Checkpoint
    profile: object
    strategy: Strategy
    runner: SearchRunner


def prepare(ctx) -> Prepared:
    """Strategy options, objectives, the insight space, the strategy and any checkpoint to
    resume from: every user error here ends the run before anything is written."""
    cfg, space = ctx.cfg, ctx.space
    cls, scfg = strategy_config(cfg.search)
    cost = objectives(ctx, scfg.cost)
    _fill_hv_reference(cfg, scfg, cost, ctx)
    if int(scfg.budget) < 1:
        raise UserError(f"search.budget must be >= 1 unique evaluation, not {scfg.budget}")
    resume_dir = cfg.task.get("resume_dir")
    work = Path(to_absolute_path(str(resume_dir))) if resume_dir else Path(ctx.run_dir)
    ckpt = Checkpoint(work, durable=bool(cfg.task.get("fsync", True)))
    if resume_dir and not ckpt.exists():
        raise UserError(f"task.resume_dir {work} holds no search checkpoint ({ckpt.state_path} is missing)")
    fetch = (lambda run_id: fetch_run_csv(cfg, run_id, "summary.csv")) if cfg.tracking.backend != "none" else None
    profile = load_insight(space, scfg.insight, ctx.rng, profile_run=scfg.profile_run, rule=scfg.from_profile,
                           cost=cost, fetch_run_summary=fetch)
    mutator = Mutator(space, profile, scfg.resolutions, getattr(scfg, "resolution_mutate_prob", 0.25))
    evaluator = Evaluator(ctx.metrics, cost)
    strategy = cls(scfg, mutator, evaluator, ctx.rng)
    runner = SearchRunner(strategy, ckpt, ctx.rng, fingerprint(cfg, profile.to_dict(space.ops)))
    runner.check_resumable()
    if strategy.constrained and not ckpt.exists():
        _check_feasible(cls, scfg, mutator, ctx.metrics, cost)
    return Prepared(cls, scfg, cost, work, ckpt, profile, strategy, runner)


def _check_feasible(cls, scfg, mutator, metrics, cost: str) -> None:
    """A constraint no arch meets (`search.constraint.latency=1`) is found here, before the
    run opens, by a probe with its own evaluator and generator (so the search itself draws
    exactly what it would without the probe). Cost checks are cheap; a feasible constraint
    is usually met by the first batch."""
    probe = cls(scfg, mutator, Evaluator(metrics, cost), np.random.default_rng(0))
    probe.sample_feasible(1)


def _fill_hv_reference(cfg, scfg, cost: str, ctx=None) -> None:
    """Unset hypervolume references come from the space (accuracy, MACs, params) and the
    device (latency), so every search of a space on a device is measured against one
    point; unset latency cost limits come from the device too (blockprof.app.device)."""
    ref = dict(scfg.hv_reference or {})
    space_ref = cfg.space.get("hv_reference") or {}
    device = None
    limits = dict(scfg.cost_limits or {})
    if cost == "latency" and ctx is not None and (ref.get("latency") is None or limits.get("latency") is None):
        from blockprof.app.device import device_costs
        device = device_costs(cfg, ctx.space, ctx.metrics.get("latency"))
        if device.origin != "device file":
            log.info("latency cost scale of %s on %s: %s", cfg.space.name, cfg.device.name, device.origin)
        if limits.get("latency") is None and device.cost_limits is not None:
            limits["latency"] = list(device.cost_limits)
            scfg.cost_limits = limits
    for key in ("accuracy", cost):
        if ref.get(key) is None:
            value = (device.hv_reference if device is not None else None) if key == "latency" else space_ref.get(key)
            if value is not None:
                ref[key] = float(value)
    if any(ref.get(k) is None for k in ("accuracy", cost)):
        log.warning("no hypervolume reference for %s on %s/%s: taken from this run's initial set, so "
                    "hypervolumes of different runs do not compare (set search.hv_reference.%s)",
                    cost, cfg.space.name, cfg.device.name, cost)
    scfg.hv_reference = ref


def run(ctx, tracker, prepared: Prepared | None = None):
    cfg, space = ctx.cfg, ctx.space
    p = prepared or prepare(ctx)
    scfg, cost, work, profile, strategy = p.scfg, p.cost, p.work, p.profile, p.strategy
    for m in ctx.metrics.values():  # memoising metrics (supernet accuracy) keep their memo with the checkpoint
        m.bind_run_dir(work)
    ops = space.ops
    evaluator = strategy.ev

    insight_path = atomic_write_text(work / "insight_space.yaml", profile.to_yaml(ops))
    tracker.log_artifact(insight_path)
    tracker.set_tags({"search.insight": profile.name, "search.cost": cost, "search.strategy": scfg.name,
                      **{f"unit.{k}": m.unit for k, m in ctx.metrics.items()}})

    t0 = time.perf_counter()
    runner = p.runner
    runner.on_iteration = lambda it, m: tracker.log_metrics(_clean(m), step=it)
    result = runner.run()
    wall = time.perf_counter() - t0
    if result.resumed_from is not None:
        tracker.set_tags({"search.resumed_from_iteration": result.resumed_from})
    tracker.log_params({"search.cost_used": cost, "search.hv_reference_used": list(strategy.hv_ref),
                        "search.cost_limits_used": strategy.limits,
                        **({"search.constraint_used": strategy.limit} if strategy.limit is not None else {})})

    scored, front = tables(strategy)
    files = [_write_csv(work / "scored.csv", scored), _write_csv(work / "front.csv", front),
             _write_csv(work / "history.csv", pd.DataFrame(result.history))]
    if strategy.constrained:
        sel = pd.unique(np.asarray(strategy.selected(), dtype=np.int64))  # a population may hold duplicates
        best = scored.iloc[sel].sort_values(ACCURACY, ascending=False, kind="stable")
        files.append(_write_csv(work / "best.csv", best))
    for f in files:
        tracker.log_artifact(f)
    from blockprof.app.calibration import time_final_front  # a calibrated device: the front, timed for real
    front_measured = time_final_front(ctx, front, cost, work, tracker)
    if scfg.plot:
        from blockprof.infra.plots import metric_label
        fig = plot_front(scored, cost, ctx.metrics[cost].unit, strategy,
                         title=f"{scfg.name} / insight {profile.name} / {space.name} on {cfg.device.name}",
                         accuracy_label=metric_label(cfg, ACCURACY))
        path = work / "front.png"
        fig.savefig(path, format="png", bbox_inches="tight", dpi=120)
        import matplotlib.pyplot as plt
        plt.close(fig)
        tracker.log_artifact(path)
    last = result.history[-1]
    tracker.log_metrics({"wall_s": wall})
    under = ", ".join(f"{lim:g}: {last[k]:.2f}" if math.isfinite(last[k]) else f"{lim:g}: -"
                      for lim, k in ((lim, f"best_acc_{cost}_le_{lim:g}") for lim in strategy.limits))
    log.info(f"search {scfg.name} (insight {profile.name}) on {space.name}/{cfg.device.name}: "
          f"{evaluator.evaluations} evaluations in {result.iteration} iterations ({result.stop_reason}"
          f"{', resumed at iteration %d' % result.resumed_from if result.resumed_from is not None else ''}); "
          f"front {int(last['front_size'])} archs, hypervolume {last['hypervolume']:.4g}; "
          f"best accuracy under {cost} {under} -> {work}")
    return {"scored": scored, "front": front, "history": result.history, "stop_reason": result.stop_reason,
            "profile": profile, "strategy": strategy, "work_dir": work, "front_measured": front_measured}


def tables(strategy: Strategy) -> tuple[pd.DataFrame, pd.DataFrame]:
    ev = strategy.ev
    acc, cost = strategy.acc(), strategy.cost()
    on_front = non_dominated(acc, cost)
    scored = pd.DataFrame({
        "eval_id": np.arange(ev.evaluations), "iteration": ev.iteration.view.copy(), "origin": ev.origin,
        "arch": [a.text for a in ev.archs], "resolution": [a.resolution for a in ev.archs],
        **ofa_configs(strategy.mutator.space, ev.archs),
        **{n: ev.values(n).copy() for n in ev.names}, "on_front": on_front,
    })
    front = scored[on_front].sort_values([strategy.cost_name, ACCURACY], ascending=[True, False], kind="stable")
    return scored, front


def ofa_configs(space, archs) -> dict:
    """An `ofa_config` column: each arch as OFA's arch dict (`ks`, `e`, `d`, `r` for the
    MobileNetV3 / ProxylessNAS spaces; `d`, `e`, `w`, `r` for ResNet), in compact JSON, so
    a row goes straight to `set_active_subnet(**config)` (and back with `space.from_ofa`).
    Nothing for a space without an OFA encoding."""
    if not archs:
        return {"ofa_config": []}
    try:
        space.to_ofa(archs[0])
    except NotImplementedError:
        return {}
    if isinstance(space, MBConvSpace):
        return {"ofa_config": _mbconv_ofa_json(space, archs)}
    return {"ofa_config": [json.dumps(space.to_ofa(a), separators=(",", ":")) for a in archs]}


def _mbconv_ofa_json(space: MBConvSpace, archs) -> list[str]:
    """`space.to_ofa` as JSON for a whole batch at once (a 20,000-arch search would spend
    most of a second in the per-arch dicts): the slot encoding holds each active layer's
    block, expansion-major; an inactive slot takes the smallest kernel and expansion, as
    `to_ofa` writes it."""
    choice = space.encode(archs).choice.astype(np.int64)
    nk = len(space.kernels)
    active = choice >= 0
    ks = np.where(active, np.asarray(space.kernels)[np.maximum(choice, 0) % nk], min(space.kernels))
    es = np.where(active, np.asarray(space.expands)[np.maximum(choice, 0) // nk], min(space.expands))
    depth = np.stack([active[:, off:off + m].sum(axis=1) for off, m in zip(space.slot_offsets, space.max_layers)], 1)
    names = np.array([str(i) for i in range(max(max(space.kernels), max(space.expands), max(space.max_layers)) + 1)],
                     dtype=object)  # small ints to text by lookup
    ks_s, es_s, d_s = names[ks].tolist(), names[es].tolist(), names[depth].tolist()
    return ['{"ks":[' + ",".join(k) + '],"e":[' + ",".join(e) + '],"d":[' + ",".join(d) + f'],"r":{a.resolution}}}'
            for k, e, d, a in zip(ks_s, es_s, d_s, archs)]


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    return atomic_write_text(path, df.to_csv(index=False))


def plot_front(scored: pd.DataFrame, cost: str, unit: str, strategy: Strategy, title: str = "",
               accuracy_label: str = "accuracy"):
    """Accuracy against cost: every scored arch, the initial set, the final front, and each
    cost limit as a labelled line (`<= 20 ms`, the best accuracy under it in the legend)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    init = scored[scored.iteration == 0]
    rest = scored[scored.iteration > 0]
    if len(rest):
        ax.scatter(rest[cost], rest[ACCURACY], s=4, c="0.75", label=f"searched ({len(rest)})", rasterized=True)
    ax.scatter(init[cost], init[ACCURACY], s=10, c="tab:blue", marker="x", label=f"initial random set ({len(init)})")
    front = scored[scored.on_front].sort_values(cost)
    ax.step(front[cost], front[ACCURACY], where="post", c="tab:red", lw=1.2)
    ax.scatter(front[cost], front[ACCURACY], s=14, c="tab:red", label=f"final front ({len(front)})", zorder=3)
    for i, lim in enumerate(strategy.limits):
        under = scored.loc[scored[cost] <= lim, ACCURACY]
        best = f": best {under.max():.2f} %" if len(under) else ": none under it"
        ax.axvline(lim, c="0.4", ls=":", lw=0.9, label="cost limits" if i == 0 else None)
        # the limit's value at the top of its line, and the best accuracy found under it
        ax.annotate(f"\u2264 {lim:g} {unit}{best}", (lim, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -3), textcoords="offset points", rotation=90, va="top", ha="left", fontsize=7,
                    color="0.25", bbox=dict(boxstyle="square,pad=0.15", fc="white", ec="none", alpha=0.8))
    if strategy.limit is not None:
        ax.axvline(strategy.limit, c="tab:green", ls="--", lw=1, label=f"constraint {strategy.limit:g} {unit}")
    ax.set_xlabel(f"{cost} [{unit}]")
    ax.set_ylabel(f"{accuracy_label} [%]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


class SearchTask(Task):
    """Predictor-guided search; its objective is the final hypervolume."""
    groups = ("space", "device", "metric", "search")

    def validate(self, ctx) -> None:
        self._prepared = prepare(ctx)

    def params(self, ctx):
        p = super().params(ctx)
        p.update({f"space.hv_reference.{k}": v for k, v in (ctx.cfg.space.get("hv_reference") or {}).items()
                  if v is not None})
        if ctx.cfg.device.latency.get("hv_reference") is not None and "latency" in self.scored_metrics(ctx):
            p["device.latency.hv_reference"] = ctx.cfg.device.latency.hv_reference
        return p

    def tags(self, ctx):
        return {**super().tags(ctx), "search": str(ctx.cfg.search.name)}

    def run(self, ctx, tracker):
        return run(ctx, tracker, getattr(self, "_prepared", None))

    def objective_value(self, result) -> float | None:
        last = result["history"][-1] if result.get("history") else {}
        return super().objective_value({k: v for k, v in last.items() if isinstance(v, (int, float))})
