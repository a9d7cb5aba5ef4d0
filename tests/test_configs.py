"""Configuration as Hydra users expect it: every option of every group composes against its
schema, user configs from --config-dir, sweeps, completion, and one-line errors for
wrong types and unknown keys."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from blockprof.app.compose import compose
from blockprof.app.main import build_task
from blockprof.app.schema import TASK_SCHEMAS
from blockprof.app.task import Task

from conftest import run_cli

CONF = Path(str(importlib.resources.files("blockprof.conf")))
GROUPS = ("space", "device", "metric", "search", "task", "tracking", "data", "experiment", "debug",
          "hparams_search")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes(group, option, tmp_path):
    """Every YAML file is valid against its schema (lightning-hydra-template's test_configs)."""
    cfg = compose([f"{group}={option}", f"paths.output_root={tmp_path}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.task.name in TASK_SCHEMAS
    assert isinstance(build_task(cfg), Task)


def test_every_group_has_options():
    for g in GROUPS:
        assert _options(g), f"conf/{g}/ is empty"


def test_user_device_from_config_dir(tmp_path):
    mine = tmp_path / "myconf" / "device"
    mine.mkdir(parents=True)
    (mine / "mypi.yaml").write_text("defaults:\n  - /schema/device/latency/lut@latency\n  - _self_\nname: mypi\n"
                                    "latency:\n  table: asset:ofa/note10\n")
    cfg = compose(["device=mypi"], config_dir=str(tmp_path / "myconf"))
    assert cfg.device.name == "mypi" and cfg.device.latency.source == "lut"
    res = run_cli(["--config-dir", str(tmp_path / "myconf"), "device=mypi", "debug=one_slot", "tracking=none",
                   f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "out" / "runs" / "profile" / "mbv3-mypi").glob("*/summary.csv"))


@pytest.mark.parametrize("args,needle", [
    (["task.num_archs=abc"], "error: task.num_archs: Value 'abc' of type 'str' could not be converted to Integer"),
    (["task.num_archs=2.9"], "error: task.num_archs: Value '2.9' of type 'float' could not be converted to Integer"),
    (["+task.num_archz=5"], "error: unknown config key 'task.num_archz' (known here: name"),
    (["task.num_archz=5"], "error: unknown config key 'task.num_archz' (known here: name"),
    (["task=search", "search.budgetx=5"], "error: unknown config key 'search.budgetx' (known here: name"),
    (["space=mbv3x"], "error: unknown space 'mbv3x' (choose from: mbv3, mbv3_w10, pn, resnet50)"),
    (["task=search", "search.budget=lots"], "error: search.budget: Value 'lots'"),
    (["device.latency.source=bogus"], "error: unknown device.latency.source 'bogus'"),
    (["task.num_archs=[1"], "error: cannot parse override"),
])
def test_bad_values_are_one_line_and_leave_nothing(tmp_path, args, needle):
    res = run_cli([*args, f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith(needle), res.stderr
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").rglob("*.csv"))
    assert not list((tmp_path / "out").rglob(".hydra")) if (tmp_path / "out").exists() else True


def test_choice_sweep_runs_one_job_per_value(tmp_path):
    res = run_cli(["-m", "space=choice(mbv3,pn)", "debug=one_slot", "tracking=none",
                   f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    jobs = sorted(p.parent.name for p in (tmp_path / "out" / "multirun").glob("*/*/summary.csv"))
    assert len(jobs) == 2 and jobs[0].startswith("0-profile-mbv3") and jobs[1].startswith("1-profile-pn")


def test_shell_completion_installs(tmp_path):
    res = run_cli(["-sc", "install=bash"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "hydra_bash_completion" in res.stdout


def test_completion_lists_group_options(tmp_path):
    res = run_cli(["-sc", "query=bash", "dev"], cwd=tmp_path, env={"COMP_LINE": "python run.py device=n", "COMP_POINT": "21"})
    assert res.returncode == 0, res.stderr
    assert "device=note10" in res.stdout and "device=npu" in res.stdout


def test_help_lists_the_groups_users_choose_fast(tmp_path):
    """`--help` is the hydra/help template: what blockprof does, the groups a user chooses
    (hydra/launcher among them; not the schema/* groups or insight), examples; and it is
    quick (Hydra's own rendering composes every group option: about 10 s)."""
    import time
    took = []
    for _ in range(3):  # the best of 3: a loaded machine slows any one start
        t0 = time.monotonic()
        res = run_cli(["--help"], cwd=tmp_path)
        took.append(time.monotonic() - t0)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("blockprof: profile neural blocks") and "powered by Hydra" not in out
    for group in (*GROUPS, "hydra/launcher"):
        assert f"\n  {group} " in out, group
    assert "*mbv3" in out and "*basic, parallel, processes, slurm" in out  # defaults marked
    assert "schema" not in out and "insight" not in out and "joblib" not in out
    assert "Examples:" in out and "range's end is excluded" in out
    assert min(took) < 3.0, took  # a fresh interpreter included


def _complete(tmp_path, line: str) -> list[str]:
    res = run_cli(["-sc", "query=bash"], cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_completion_offers_user_facing_keys_only(tmp_path):
    top = _complete(tmp_path, "python run.py ")
    assert {"space=", "task.", "seed=", "hparams_search="} <= set(top)
    assert not [w for w in top if w.startswith(("schema", "insight"))]
    search = _complete(tmp_path, "python run.py task=search search.")
    assert "search.budget=" in search and not [w for w in search if "_target_" in w or w == "search.name="]
    launchers = _complete(tmp_path, "python run.py hydra/launcher=")
    assert sorted(launchers) == ["hydra/launcher=basic", "hydra/launcher=parallel", "hydra/launcher=processes",
                                 "hydra/launcher=slurm"]


def test_deletion_overrides(tmp_path):
    """`~key` of a key the run reads is refused in one line (not Hydra's "Error executing
    job" and then a contradicting message); `~debug` removes an optional preset."""
    res = run_cli(["~seed", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and lines == [
        "error: cannot delete 'seed' (~seed): every key has a default that the run reads; set a value instead "
        "(seed=<value>)"], res.stderr
    assert not (tmp_path / "out").exists()
    res = run_cli(["--cfg", "job", "debug=tiny", "~debug"], cwd=tmp_path)
    assert res.returncode == 0 and "num_archs: 50" in res.stdout, res.stderr


def test_each_default_is_written_once():
    """Task and search YAML files hold only what differs from their schema's defaults."""
    import yaml
    from omegaconf import OmegaConf

    from blockprof.app.schema import TASK_SCHEMAS
    from blockprof.search.strategies import STRATEGIES

    schemas = {("task", n): c for n, c in TASK_SCHEMAS.items()}
    schemas.update({("search", n): cls.Config for n, cls in STRATEGIES.items()})
    for (group, option), schema in schemas.items():
        written = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
        written.pop("defaults", None)
        defaults = OmegaConf.to_container(OmegaConf.structured(schema))
        repeated = [k for k, v in written.items() if k in defaults and defaults[k] == v]
        assert not repeated, f"conf/{group}/{option}.yaml repeats schema defaults: {repeated}"
    assert OmegaConf.structured(schemas[("search", "rm_cons_acc")]).budget != 1000  # the one difference it writes


def test_optuna_sweep_optimises_the_search_objective(tmp_path):
    """Tasks return their objective (hypervolume for search), so Optuna's sweeper can use it."""
    res = run_cli(["hparams_search=rm_pareto_hv", "hydra.sweeper.n_trials=3", "search.budget=300", "tracking=none",
                   f"paths.output_root={tmp_path}/out"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    (results,) = (tmp_path / "out" / "multirun").glob("*/optimization_results.yaml")
    best = OmegaConf.load(results)
    assert best.name == "optuna" and best.best_value > 0
    assert set(best.best_params) == {"search.budget_per_iter", "search.mutation_depth", "search.pareto_runs",
                                     "search.resolution_mutate_prob"}
    jobs = sorted(p.name for p in results.parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 3 and all("search.mutation_depth-" in j for j in jobs)  # folders show the swept values
