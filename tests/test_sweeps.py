"""Sweeps at scale, for real: `python run.py -m` with the joblib pool (8 jobs, 4 workers)
against a fresh and then an existing SQLite store, a submitit multi-process sweep of
profile shards merged back into the unsharded summary, the SLURM launcher config, and
`blockprof.compare` over the recorded sweeps."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from blockprof.app.main import execute
from blockprof.infra.compare import compare, main as compare_main
from conftest import CONF, compose, run_cli

# profile: one slot, 2 archs per slot; measured latency on 160 px inputs keeps local_cpu cheap
PROFILE = ["task.all=false", "task.blocks=[[1,0,7,6]]", "task.num_archs=2", "space.resolutions=[160]",
           "metric.names=[mmacs,latency]"]
SEARCH = ["task=search", "space=mbv3", "device=note10", "search.budget=60", "search.init_size=20",
          "search.budget_per_iter=20", "search.iterations=2", "search.plot=false"]
TIMINGS: dict[str, float] = {}


def _runs(root: Path, parents: bool = False):
    """The job runs (or, with `parents`, the sweeps' parent runs) of every blockprof/<task> experiment."""
    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exps = c.search_experiments(filter_string="name LIKE 'blockprof/%'")
    runs = c.search_runs([e.experiment_id for e in exps], max_results=1000) if exps else []
    return c, [r for r in runs if ("sweep_kind" in r.data.tags) == parents]


def _sweep(tmp: Path, root: Path, name: str, args: list[str]):
    t0 = time.monotonic()
    r = run_cli(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=4", *args,
                 f"paths.output_root={root}", f"hydra.sweep.dir={tmp / 'multirun' / name}"], cwd=tmp, timeout=600,
                env={"BLOCKPROF_MEASURED_SOURCE": "measured"})  # time local_cpu directly: no calibration
    TIMINGS[name] = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-4000:]
    assert "tracking:" not in r.stderr, r.stderr[-3000:]  # no MLflow failure in any job
    return r


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two 8-job sweeps with 4 workers into one output root: the first creates the store."""
    tmp = tmp_path_factory.mktemp("sweeps")
    root = tmp / "outputs"
    assert not (root / "mlflow.db").exists()
    first = _sweep(tmp, root, "profiles", ["space=mbv3,pn", "device=note10,local_cpu", "seed=0,1", *PROFILE])
    _, after_first = _runs(root)
    second = _sweep(tmp, root, "searches", [*SEARCH, "search=rm_pareto,random", "seed=0,1,2,3"])
    return {"tmp": tmp, "root": root, "first": first, "second": second, "after_first": after_first}


def test_parallel_sweeps_record_every_job_fresh_and_existing_store(sweeps, capsys):
    tmp, root = sweeps["tmp"], sweeps["root"]
    # 1. the very first sweep against a store that did not exist: 8 jobs, 8 complete runs
    first = sweeps["after_first"]
    assert len(first) == 8 and all(r.info.status == "FINISHED" for r in first)
    assert "Joblib.Parallel(n_jobs=4" in sweeps["first"].stdout + sweeps["first"].stderr
    # 2. the second sweep against the now existing store: 8 more, nothing lost or doubled
    client, runs = _runs(root)
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    by_sweep: dict[str, list] = {}
    for r in runs:
        by_sweep.setdefault(r.data.tags["sweep"], []).append(r)
    # sweeps are named relative to the output root (no absolute paths in tags)
    sweep_dirs = {f"../multirun/{n}" for n in ("profiles", "searches")}
    assert set(by_sweep) == sweep_dirs and all(len(v) == 8 for v in by_sweep.values())
    for d, rs in by_sweep.items():
        assert sorted(int(r.data.tags["sweep_job"]) for r in rs) == list(range(8))
    # one experiment per task, one parent run per sweep with its jobs nested under it
    assert len({r.info.experiment_id for r in runs}) == 2
    _, parents = _runs(root, parents=True)
    assert sorted(p.data.tags["sweep_parent"] for p in parents) == sorted(sweep_dirs)
    assert all(p.info.status == "FINISHED" and p.info.run_name.startswith("sweep-") for p in parents)
    by_parent = {p.info.run_id: p.data.tags["sweep_parent"] for p in parents}
    assert all(by_parent[r.data.tags["mlflow.parentRunId"]] == r.data.tags["sweep"] for r in runs)
    assert {p.data.params.get("sweep.seed") for p in parents} == {"0,1", "0,1,2,3"}
    assert all(re.fullmatch(r"(profile|search)-\w+-\w+-#\d-[\d_-]+", r.info.run_name) for r in runs)
    prof = by_sweep["../multirun/profiles"]
    combos = {(r.data.tags["space"], r.data.tags["device"], r.data.params["seed"]) for r in prof}
    assert combos == {(s, d, str(k)) for s in ("mbv3", "pn") for d in ("note10", "local_cpu") for k in (0, 1)}
    folders = sorted(p for p in (tmp / "multirun" / "profiles").iterdir() if p.is_dir())
    assert len(folders) == 8 and all((f / "summary.csv").is_file() and (f / "tracking.json").is_file()
                                     for f in folders)
    for r in prof:
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config.yaml", "summary.csv", "samples.csv"} <= arts
        assert r.data.metrics["baseline_latency_mean"] > 0
    # the store is healthy afterwards: a plain serial run still logs to it
    cfg = compose(["task=evaluate", "task.num_archs=3", "metric.names=[mmacs]", "tracking=local"], root)
    execute(cfg, run_dir=tmp / "serial")
    assert len(_runs(root)[1]) == 17
    with capsys.disabled():  # shown in the test output even when pytest captures it
        print(f"\nsweep figures: 2 sweeps x 8 jobs, joblib n_jobs=4; runs recorded: 8 after the first "
              f"(fresh store), 16 after the second (existing store); wall {TIMINGS['profiles']:.0f} s and "
              f"{TIMINGS['searches']:.0f} s")


def test_compare_builds_table_heatmaps_and_fronts(sweeps, capsys):
    tmp, root = sweeps["tmp"], sweeps["root"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    res = compare([str(tmp / "multirun" / "profiles")], uri, out=tmp / "cmp_profiles")
    t = res["table"]
    assert len(t) == 8 and list(t["sweep_job"]) == list(range(8))
    assert {"run_id", "status", "space", "device", "baseline_latency_mean", "param.seed"} <= set(t.columns)
    assert "param.task.num_archs" not in t.columns  # only the params that differ between the runs
    on_disk = pd.read_csv(tmp / "cmp_profiles" / "runs.csv")
    assert list(on_disk["run_id"]) == list(t["run_id"])
    # per-device latency differs by 10x (LUT vs measured): the table keeps the raw values
    lat = t.groupby("device")["baseline_latency_mean"].mean()
    assert lat["note10"] > 0 and lat["local_cpu"] > 0
    names = sorted(p.name for p in res["files"][1:])
    assert names == [f"heatmaps_{s}_{m}.png" for s in ("mbv3", "pn") for m in ("latency", "mmacs")]
    w, h = Image.open(tmp / "cmp_profiles" / "heatmaps_mbv3_latency.png").size
    assert w > 2.5 * h  # four panels side by side
    # the search sweep by its tag value through the CLI: fronts of 8 runs overlaid
    sweep_tag = str(tmp / "multirun" / "searches")
    assert compare_main(["--sweep", sweep_tag, "--uri", uri, "--out", str(tmp / "cmp_search")]) == 0
    out = capsys.readouterr().out
    assert "8 runs ->" in out and "fronts_mbv3_note10_latency.png" in out
    t2 = pd.read_csv(tmp / "cmp_search" / "runs.csv")
    assert set(t2["search.strategy"]) == {"rm_pareto", "random"} and (t2["hypervolume"] > 0).all()
    # 'latest' is the newest sweep; a sweep without runs is one clear error line
    assert compare(["latest"], uri, out=tmp / "cmp_latest")["table"]["sweep"].iloc[0] == "../multirun/searches"
    assert compare_main(["--sweep", str(tmp / "nope"), "--uri", uri, "--out", str(tmp / "x")]) == 2
    assert "no runs tagged sweep=" in capsys.readouterr().err


def test_processes_launcher_runs_profile_shards_that_merge(tmp_path, capsys):
    """hydra/launcher=processes (submitit's local executor): each shard in its own process;
    task=merge_profile on their folders gives the summary of one unsharded run."""
    slots = "[[0,0,3,3],[1,1,5,4],[2,2,7,6],[3,0,3,6],[4,1,5,3],[5,0,7,4],[1,0,7,6]]"
    root, common = tmp_path / "outputs", ["space=pn", "device=note10", "seed=3", "task.num_archs=3",
                                          "task.all=false", f"task.blocks={slots}", "metric.names=[mmacs,latency]"]
    sweep_dir = tmp_path / "multirun" / "shards"
    t0 = time.monotonic()
    r = run_cli(["-m", "hydra/launcher=processes", *common, "task.num_shards=2", "task.shard_index=0,1",
                 f"paths.output_root={root}", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=600)
    TIMINGS["shards"] = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-4000:]
    shards = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(shards) == 2
    # submitit's local executor names each job's folder by the id of the process it started
    jobs = [d.name for d in (sweep_dir / ".submitit").iterdir() if d.is_dir() and d.name.isdigit()]
    assert len(set(jobs)) == 2 and all(list((sweep_dir / ".submitit" / j).glob("*_log.out")) for j in jobs)
    _, runs = _runs(root)
    assert len(runs) == 2 and sorted(r.data.tags["shard"] for r in runs) == ["0/2", "1/2"]
    parts = [pd.read_csv(d / "summary.csv") for d in shards]
    assert [len(p) for p in parts] == [5, 4]  # baseline + every 2nd slot
    # the merge (same overrides as the README's command) and one unsharded run, same seed
    inputs = f"task.inputs=[{','.join(map(str, shards))}]"
    execute(compose(["task=merge_profile", *common, inputs, "tracking=none"], root), run_dir=tmp_path / "merged")
    execute(compose([*common, "tracking=none"], root), run_dir=tmp_path / "whole")
    merged = pd.read_csv(tmp_path / "merged" / "summary.csv")
    pd.testing.assert_frame_equal(merged, pd.read_csv(tmp_path / "whole" / "summary.csv"))
    assert len(merged) == 8 and merged["n"].eq(3).all()  # 7 slots + the baseline
    with capsys.disabled():
        print(f"\nsubmitit local sweep: 2 shard jobs as 2 processes in {TIMINGS['shards']:.0f} s")


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_exposes_the_documented_knobs():
    from hydra.utils import instantiate

    cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                               "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=240"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.cpus_per_task == 4 and launcher.mem_gb == 16 and launcher.array_parallelism == 64
    obj = instantiate(launcher)  # the plugin's real launcher class, configured (submitting needs SLURM)
    assert type(obj).__name__ == "SlurmLauncher" and obj.params["partition"] == "gpu"
    # the plugin's schema still validates our file: a typo fails at composition
    with pytest.raises(Exception, match="partitoin"):
        _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partitoin=gpu"])
    for name, target in (("parallel", "JoblibLauncher"), ("processes", "LocalLauncher")):
        c = _compose_with_hydra([f"hydra/launcher={name}"])
        assert c.hydra.launcher._target_.endswith(target)


def test_seed_sweep_folders_name_the_seed(tmp_path):
    """`'seed=range(0,2)'`: range's end is excluded (two jobs), and each job's folder says
    which seed it ran, next to the other swept keys."""
    r = run_cli(["-m", "seed=range(0,2)", "task.num_archs=3", "debug=one_slot", "tracking=none",
                 f"paths.output_root={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name[0].isdigit())
    assert jobs == ["0-profile-mbv3-note10-seed-0+task.num_archs-3", "1-profile-mbv3-note10-seed-1+task.num_archs-3"]
