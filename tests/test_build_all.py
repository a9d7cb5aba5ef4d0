"""Build everything the configs offer, not only compose it.

- every space x device pair: the space and its metrics are built and score two archs, or
  the pair is refused with one clear `UserError` (and that refusal is asserted);
- every preset (`experiment`, `debug`, `hparams_search`) runs at tiny size with every task
  it names.

Options are read from conf/, so a new space, device or preset is covered without editing
this file. Sizes are the smallest that still run each code path: timed devices time one
subnet once at the smallest resolution, predictor devices train a 2-epoch predictor on a
small synthetic CSV."""
from __future__ import annotations

import importlib.resources
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from blockprof.app.api import run
from blockprof.app.compose import compose
from blockprof.app.main import space_from_config
from blockprof.app.api import metrics_for
from blockprof.common.errors import UserError
from blockprof.core.latency_csv import write_latency_csv
from blockprof.metrics.analytic import mmacs_metric
from blockprof.metrics.base import score

from conftest import run_cli

CONF = Path(str(importlib.resources.files("blockprof.conf")))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _synthetic_csv(path: Path, cfg, n: int = 40) -> Path:
    """A seed-format latency CSV for cfg's space and device: latency from MACs (a
    stand-in for measurements: only the code path is under test here)."""
    space = space_from_config(cfg)
    archs = space.sample(np.random.default_rng(0), n)
    ms = mmacs_metric(space).evaluate(archs) / 20.0 + 1.0
    return write_latency_csv(path, [(i, a, str(cfg.device.name), float(v)) for i, (a, v) in enumerate(zip(archs, ms))])


def _tiny_device(cfg, tmp_path: Path) -> list[str]:
    """Overrides that make the device's latency cheap without skipping its code path. A
    measured device is timed directly here (its calibrated predictor has tests of its own)."""
    src = cfg.device.latency.source
    if src in ("measured", "calibrated"):
        return ["device.latency.source=measured", "device.latency.warmup=0", "device.latency.repeats=1",
                "device.latency.references=0", f"space.resolutions=[{min(cfg.space.resolutions)}]"]
    if src == "predictor":
        csv = _synthetic_csv(tmp_path / "lat.csv", cfg)
        return [f"device.latency.csv={csv}", f"device.latency.checkpoint={tmp_path}/pred.pt",
                "+device.latency.train.max_epochs=2", "+device.latency.train.patience=2",
                "device.latency.allow_small_test=true"]
    return []


# the pairs that must refuse, and the words their one line must hold: the published Note10
# tables serve mbv3 (w1.2) and pn (by MAC transfer) only; the generic ssh/command files need
# the board or the tool named
TABLE_GAPS = {("mbv3_w10", "note10"), ("resnet50", "note10")}
NEEDS_SETTING = {"ssh": "set device.latency.host", "command": "set device.latency.command"}


def _refusal(cfg) -> str | None:
    """Why the pair cannot work here (None: it must work)."""
    lat = cfg.device.latency
    if lat.get("hw") == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if (cfg.space.name, cfg.device.name) in TABLE_GAPS:
        return f"has no latency lookup table for space {cfg.space.name}"
    return NEEDS_SETTING.get(str(cfg.device.name))


@pytest.mark.parametrize("space,device", list(itertools.product(_options("space"), _options("device"))))
def test_space_device_builds_and_scores(space, device, tmp_path):
    base = [f"space={space}", f"device={device}", f"paths.output_root={tmp_path}/out", "tracking=none"]
    cfg = compose(base)
    base += _tiny_device(cfg, tmp_path)
    cfg = compose(base)
    why = _refusal(cfg)
    if why is not None:
        # latency asked for explicitly (no skipping): one clear line naming the reason
        strict = compose([*base, "metric.names=[latency]", "metric.skip_unavailable=false"])
        with pytest.raises(UserError, match=why):
            score(metrics_for(strict), space_from_config(strict).sample(np.random.default_rng(0), 1))
        return
    metrics = metrics_for(cfg)
    assert "latency" in metrics and "mmacs" in metrics
    assert ("accuracy" in metrics) == (space_from_config(cfg).capabilities.accuracy_predictor is not None)
    archs = space_from_config(cfg).sample(np.random.default_rng(1), 2)
    values = score(metrics, archs)
    for name, v in values.items():
        assert v.shape == (2,) and np.isfinite(v).all() and (v > 0).all(), (name, v)


# ------------------------------------------------------------------ presets
TINY_SEARCH = ["search.budget=40", "search.iterations=2", "search.plot=false"]
TINY_TASK = {
    "profile": ["task.num_archs=1"],
    "search": TINY_SEARCH,
    "evaluate": ["task.num_archs=2"],
    "export": ["task.num_archs=1"],
    "measure": ["task.num_archs=1", "task.rounds=1", "task.warmup=0", "task.references=0", "task.retest_archs=0"],
}
# the tasks a preset names in its header (`[task=evaluate|measure|export]`) besides its own
PRESET_TASKS = {("debug", "tiny"): ["profile", "evaluate", "measure", "export"]}
DEVICE_FOR = {"measure": "device=local_cpu"}  # a task that times on this machine


def _preset_runs():
    for group in ("experiment", "debug"):
        for option in _options(group):
            for task in PRESET_TASKS.get((group, option), [None]):
                yield group, option, task


@pytest.mark.parametrize("group,option,task", list(_preset_runs()))
def test_preset_runs_tiny(group, option, task, tmp_path):
    over = [f"{group}={option}", f"paths.output_root={tmp_path}/out", "tracking.backend=none"]
    if task:
        over += [f"task={task}", *([DEVICE_FOR[task]] if task in DEVICE_FOR else [])]
    name = compose(over).task.name
    over += [o for o in TINY_TASK.get(name, []) if not (group == "debug" and o.startswith("task.num_archs"))]
    result = run(compose(over), tmp_path / "run")
    assert result is not None
    assert any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("strategy", _options("search"))
def test_tiny_search_preset_every_strategy(strategy, tmp_path):
    res = run(compose(["debug=tiny_search", f"search={strategy}", f"paths.output_root={tmp_path}/out"]), tmp_path / "run")
    assert len(res["scored"]) <= 40


def test_tiny_search_from_the_command_line(tmp_path):
    """The preset's own usage line, as typed."""
    res = run_cli(["debug=tiny_search", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "out" / "runs" / "search").glob("*/*/front.csv"))


def test_hparams_search_predictor_mape(tmp_path):
    cfg = compose(["device=local_cpu", f"paths.output_root={tmp_path}/out"])
    csv = _synthetic_csv(tmp_path / "lat.csv", cfg, n=40)
    res = run_cli(["-m", "hparams_search=predictor_mape", "device=local_cpu", f"task.csv={csv}",
                   "task.max_epochs=2", "hydra.sweeper.n_trials=2",
                   "task.allow_small_test=true",
                   "tracking=none", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    best = list((tmp_path / "out" / "multirun").glob("*/optimization_results.yaml"))
    assert best, res.stdout


def test_hparams_search_rm_pareto_hv(tmp_path):
    res = run_cli(["-m", "hparams_search=rm_pareto_hv", "hydra.sweeper.n_trials=2", *TINY_SEARCH,
                   "tracking=none", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "out" / "multirun").glob("*/optimization_results.yaml"))


def test_every_preset_is_covered():
    """A new preset file lands in one of the tests above."""
    ran = {(g, o) for g, o, _ in _preset_runs()} | {("hparams_search", "predictor_mape"),
                                                    ("hparams_search", "rm_pareto_hv")}
    offered = {(g, o) for g in ("experiment", "debug", "hparams_search") for o in _options(g)}
    assert offered <= ran, offered - ran
