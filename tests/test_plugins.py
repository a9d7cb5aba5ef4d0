"""A package outside blockprof (tests/plugin_pkg) adds a space, a lookup-table device, a
search strategy and a task through the `blockprof.plugins` entry point; each runs through
`python run.py` and shows up in `--help` and in error messages like a built-in.

The package is made visible the way an installed one is: its folder on `sys.path` plus a
`.dist-info` folder holding its `entry_points.txt`, written from its pyproject.toml, so
`importlib.metadata` finds it (an install into a throw-away venv does the same in several
seconds more)."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blockprof.common.errors import UserError

from conftest import REPO, run_cli

PKG = REPO / "tests" / "plugin_pkg"


def _dist_info(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in eps.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment of a Python that has the example plugin installed."""
    project = tomllib.loads((PKG / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("site")
    _dist_info(site, project["name"], project["version"], project["entry-points"])
    path = os.pathsep.join([str(REPO), str(PKG), str(site)])
    return {"PYTHONPATH": path}


def _run(args, tmp_path, env):
    return run_cli([*args, "tracking=none", f"paths.output_root={tmp_path}/out"], cwd=tmp_path, env=env)


def _one_run(tmp_path, task: str, folder: str) -> Path:
    runs = list((tmp_path / "out" / "runs" / task / folder).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_help_lists_plugin_options(plugin_env, tmp_path):
    res = run_cli(["--help"], cwd=tmp_path, env=plugin_env)
    assert res.returncode == 0, res.stderr
    # each group: "  <group>  <what it chooses>", then its options on the next line
    lines = res.stdout.splitlines()
    groups = {line.split()[0]: lines[i + 1] for i, line in enumerate(lines[:-1])
              if line.startswith("  ") and not line.startswith("   ") and line.split()}
    assert "pn_untrained" in groups["space"] and "mbv3" in groups["space"]
    assert "synth_phone" in groups["device"] and "note10" in groups["device"]
    assert "hill_climb" in groups["search"] and "rm_pareto" in groups["search"]
    assert "block_count" in groups["task"] and "profile" in groups["task"]


def test_without_the_plugin_none_of_it_exists(tmp_path):
    res = run_cli(["space=pn_untrained"], cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: unknown space 'pn_untrained' (choose from: mbv3")


def test_errors_list_plugin_options(plugin_env, tmp_path):
    res = _run(["task=search", "search=hill_climbz"], tmp_path, plugin_env)
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: unknown search 'hill_climbz'") and "hill_climb," in line and "rm_pareto" in line
    assert not (tmp_path / "out").exists()


def test_plugin_space_device_and_task(plugin_env, tmp_path):
    """The plugin's space class (no pretrained weights: accuracy is dropped) scored on the
    plugin's table device (its own table), and the plugin's task on the plugin's space."""
    res = _run(["space=pn_untrained", "device=synth_phone", "task=evaluate",
                "task.num_archs=3"], tmp_path, plugin_env)
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(_one_run(tmp_path, "evaluate", "pn_untrained-synth_phone") / "archs.csv")
    assert len(df) == 3 and "accuracy" not in df and (df["latency"] > 0).all() and set(df["resolution"]) <= {160, 176}

    res = _run(["space=pn_untrained", "task=block_count", "task.num_archs=4"], tmp_path, plugin_env)
    assert res.returncode == 0, res.stderr
    counts = pd.read_csv(_one_run(tmp_path, "block_count", "pn_untrained-note10") / "block_counts.csv")
    assert counts["block"].str.startswith("mbconv2_").all() and counts["count"].sum() >= 4 * 6

    # the plugin task's schema is enforced like a built-in's, before any folder exists
    (tmp_path / "bad").mkdir()
    res = _run(["task=block_count", "task.num_archz=4"], tmp_path / "bad", plugin_env)
    assert res.returncode == 2 and "error: unknown config key 'task.num_archz'" in res.stderr
    assert not (tmp_path / "bad" / "out").exists()


def test_plugin_strategy_with_a_user_device(plugin_env, tmp_path):
    """The plugin's strategy searches with a device of the user's own (`--config-dir`)."""
    mine = tmp_path / "myconf" / "device"
    mine.mkdir(parents=True)
    (mine / "mytab.yaml").write_text("defaults:\n  - /schema/device/latency/lut@latency\n  - _self_\n"
                                     "name: mytab\nlatency:\n  table: asset:ofa/note10\n  hv_reference: 60.0\n")
    res = _run(["--config-dir", str(tmp_path / "myconf"), "task=search", "search=hill_climb", "device=mytab",
                "search.budget=40", "search.plot=false"], tmp_path, plugin_env)
    assert res.returncode == 0, res.stderr
    scored = pd.read_csv(_one_run(tmp_path, "search", "mbv3-mytab") / "scored.csv")
    assert len(scored) == 40 and scored["arch"].nunique() == 40


def test_plugin_table_device_own_table():
    """The plugin's own ProxylessNAS-format table (w1.0, 224 px) serves a w1.3 space by MAC ratio."""
    from blockprof.core.families.mbconv import ProxylessSpace
    from blockprof.metrics.lut import lookup_table_latency

    space = ProxylessSpace(name="pn", resolutions=[160], width_mult=1.3)
    table = PKG / "bp_example" / "tables" / "synth_phone.yaml"
    lat = lookup_table_latency(space, str(table), transfer="macs")
    assert (lat.evaluate(space.sample(np.random.default_rng(0), 2)) > 0).all()


def test_a_broken_plugin_is_one_error_line(tmp_path):
    site = tmp_path / "site"
    _dist_info(site, "broken-plugin", "0.1", {"blockprof.plugins": {"broken": "no_such_module_xyz"}})
    res = run_cli(["task=evaluate"], cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: plugin 'broken' (no_such_module_xyz) failed to load: ModuleNotFoundError: No module named 'no_such_module_xyz'"]
    assert not (tmp_path / "outputs").exists()


def test_task_module_and_yaml_without_an_entry_point(tmp_path):
    """A task module on the path and a YAML naming it in `--config-dir`, no entry point: the
    task's own schema supplies the defaults and refuses unknown keys, before any folder exists."""
    conf = tmp_path / "myconf" / "task"
    conf.mkdir(parents=True)
    (conf / "bc.yaml").write_text("_target_: bp_example.task.BlockCountTask\nname: block_count\nnum_archs: 3\n")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(PKG)])}
    res = _run(["--config-dir", str(tmp_path / "myconf"), "task=bc"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    counts = pd.read_csv(_one_run(tmp_path, "block_count", "mbv3-note10") / "block_counts.csv")
    assert counts["count"].sum() >= 3 * 10
    res = _run(["--config-dir", str(tmp_path / "myconf"), "task=bc", "task.num_archz=3"], tmp_path / "myconf", env)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'task.num_archz'")
    assert not (tmp_path / "myconf" / "out").exists()


def test_abstract_hooks_fail_at_instantiation():
    """A space family, search-ops, strategy or task that misses a hook fails when built."""
    from blockprof.app.task import Task
    from blockprof.core.families.mbconv import MBConvOps, MobileNetV3Space
    from blockprof.core.space import DesignSpace, FamilyOps
    from blockprof.search.strategies import Strategy

    class NoLayers(DesignSpace):
        pass

    class NoStep(Strategy):
        def initialize(self):
            pass

    class NoRun(Task):
        pass

    class NoShrink(FamilyOps):
        pass

    for cls, args in ((NoLayers, ()), (NoStep, (None, None, None, None)), (NoRun, (None,)), (NoShrink, (None,))):
        with pytest.raises(TypeError, match="abstract"):
            cls(*args)
    space = MobileNetV3Space(name="mbv3", resolutions=[160], width_mult=1.2)  # the real ones still build
    assert isinstance(space.ops, MBConvOps)
