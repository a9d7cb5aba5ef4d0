"""A finished search continues to a larger budget from its checkpoint and ends as one run
of that budget would (same seed): scored archs, front and history identical."""
import json

import pandas as pd
import pytest

from blockprof.app.main import execute

from conftest import run_cli

BASE = ["task=search", "search.plot=false", "tracking=none"]


def outputs(folder):
    return {n: pd.read_csv(folder / n) for n in ("scored.csv", "front.csv", "history.csv")}


def assert_same(a, b):
    for name, df in outputs(a).items():
        pd.testing.assert_frame_equal(df, outputs(b)[name], check_exact=True, obj=name)


@pytest.mark.parametrize("strategy,extra,small,large", [
    # 450 is not a whole number of iterations: its last one was cut short and is run again
    ("rm_pareto", ["search.init_size=60", "search.budget_per_iter=60"], 450, 600),
    # constrained: the last batch of the small run was capped by `remaining` inside the strategy
    ("rm_cons_acc", ["search.init_size=30", "search.budget_per_iter=40", "search.constraint.latency=20"], 190, 300),
])
def test_larger_budget_continues_to_the_same_result(cfg_factory, tmp_path, strategy, extra, small, large):
    over = [*BASE, f"search={strategy}", *extra]
    one = execute(cfg_factory(*over, f"search.budget={large}"), run_dir=tmp_path / "one")
    first = execute(cfg_factory(*over, f"search.budget={small}"), run_dir=tmp_path / "cont")
    assert first["stop_reason"] == "budget" and len(first["scored"]) == small
    more = execute(cfg_factory(*over, f"search.budget={large}"), run_dir=tmp_path / "cont")
    assert more["stop_reason"] == one["stop_reason"] and len(more["scored"]) == len(one["scored"])
    assert_same(tmp_path / "one", tmp_path / "cont")
    state = json.loads((tmp_path / "cont" / "checkpoint" / "state.json").read_text())
    assert state["fingerprint"]["search"]["budget"] == large
    # and the continued checkpoint is a plain one of the larger search: started again, nothing changes
    execute(cfg_factory(*over, f"search.budget={large}"), run_dir=tmp_path / "cont")
    assert_same(tmp_path / "one", tmp_path / "cont")


def test_cli_continues_a_finished_run_folder(tmp_path):
    """`task=search search.budget=N hydra.run.dir=<a finished smaller run>` on the command line."""
    run = tmp_path / "run"
    args = [*BASE, "search.init_size=40", "search.budget_per_iter=40", f"paths.output_root={tmp_path}/out",
            f"hydra.run.dir={run}"]
    r = run_cli([*args, "search.budget=100"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli([*args, "search.budget=180"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(run / "scored.csv")) == 180
    log = (run / "run.log").read_text()
    assert "continuing the search" in log and "search.budget 100 -> 180" in log
    assert "evaluations 180 of budget 180" in log
