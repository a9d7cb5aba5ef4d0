"""task=search: Pareto measures, the mutator, insight profiles, budget accounting,
kill-and-resume, from_profile and the one-line errors. Real spaces, real metrics
(OFA accuracy predictor, Note10 tables, analytic MACs), real Hydra and MLflow."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.metrics.accuracy_predictor import OFAAccuracyPredictor
from blockprof.metrics.analytic import mmacs_metric
from blockprof.metrics.lut import note10_latency
from blockprof.metrics.base import score
from blockprof.core.space import Arch
from blockprof.core.registry import build_space
from blockprof.infra.tracking import track_run
from blockprof.search.checkpoint import Checkpoint
from blockprof.search.evaluator import Evaluator
from blockprof.search.insight import (FromProfileRule, derive_from_summary, load_insight, named_profile, named_profiles,
                            profile_fits, random_variant)
from blockprof.search.mutation import Mutator, mutate_archs
from blockprof.search.pareto import best_under, hypervolume, non_dominated, pareto_layers
from blockprof.search.runner import SearchRunner

from conftest import REPO, run_cli

BASE = ["task=search", "search.iterations=50", "search.plot=false"]
SMALL = [*BASE, "search.budget=420", "search.init_size=60", "search.budget_per_iter=60"]


# ===================================================================== Pareto measures
def brute_front(a, c):
    n = len(a)
    return np.array([not any(a[j] >= a[i] and c[j] <= c[i] and (a[j] > a[i] or c[j] < c[i]) for j in range(n))
                     for i in range(n)], dtype=bool)


def brute_hv(a, c, ra, rc):
    """Union area of the boxes [c_i, rc] x [ra, a_i], by coordinate compression."""
    inside = (a > ra) & (c < rc)
    a, c = a[inside], c[inside]
    if not len(a):
        return 0.0
    xs, ys = np.unique(np.r_[c, rc]), np.unique(np.r_[a, ra])
    area = 0.0
    for k in range(len(xs) - 1):
        for m in range(len(ys) - 1):
            if np.any((c <= xs[k]) & (a >= ys[m + 1])):
                area += (xs[k + 1] - xs[k]) * (ys[m + 1] - ys[m])
    return area


@pytest.mark.parametrize("trial", range(60))
def test_front_layers_hypervolume_and_budgets_match_brute_force(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(1, 40))
    # small integer grids make ties (equal accuracy, equal cost, identical points) common
    a = rng.integers(0, 8, n).astype(float) if trial % 2 else rng.normal(75, 3, n)
    c = rng.integers(0, 8, n).astype(float) if trial % 3 else rng.uniform(10, 40, n)
    assert np.array_equal(non_dominated(a, c), brute_front(a, c))
    left, layers = np.ones(n, bool), np.zeros(n, bool)
    for runs in (1, 2, 3):  # peeling by hand
        idx = np.flatnonzero(left)
        m = brute_front(a[idx], c[idx])
        layers[idx[m]] = True
        left[idx[m]] = False
        assert np.array_equal(pareto_layers(a, c, runs), layers)
    ra, rc = float(np.quantile(a, 0.2)), float(np.quantile(c, 0.8)) + 0.5
    assert hypervolume(a, c, ra, rc) == pytest.approx(brute_hv(a, c, ra, rc), rel=1e-12, abs=1e-12)
    lims = [float(np.quantile(c, q)) for q in (0.1, 0.5, 1.0)] + [float(c.min()) - 1]
    want = [a[c <= L].max() if (c <= L).any() else np.nan for L in lims]
    np.testing.assert_array_equal(best_under(a, c, lims), want)


def test_hypervolume_by_hand_and_nan_is_never_on_front():
    # two points: (acc 80, cost 10), (acc 82, cost 20), ref (70, 30): 20*10 + 10*2
    assert hypervolume([80, 82, 75], [10, 20, 25], 70, 30) == pytest.approx(220.0)
    assert hypervolume([60], [10], 70, 30) == 0.0
    m = non_dominated([np.nan, 80, 81], [5, 10, np.nan])
    assert m.tolist() == [False, True, False]


# ===================================================================== profiles and mutator
CASES = [("mbv3", p) for p in ("full", "npu", "gpu", "cpu", "note10", "max_acc", "note10_random", "npu_random")] + \
        [("pn", p) for p in ("full", "npu", "gpu", "cpu", "max_acc", "max_acc_random")] + \
        [("resnet50", p) for p in ("full", "max_acc", "max_acc_random")]


@pytest.fixture(scope="module")
def spaces():
    return {n: build_space(n) for n in ("mbv3", "pn", "resnet50")}


def test_shared_reference_transcribed_exactly(spaces):
    ref = yaml.safe_load((REPO.parent / "shared" / "reference" / "insight_spaces.yaml").read_text()) \
        if (REPO.parent / "shared" / "reference" / "insight_spaces.yaml").is_file() else None
    if ref is None:
        pytest.skip("shared reference not present")
    for name, sp in spaces.items():
        ours = named_profiles(sp)
        theirs = {k: v for k, v in ref[name].items() if isinstance(v, dict)}
        assert ours == theirs
        for prof in ours:
            named_profile(sp, prof)  # every shipped profile fits its space


@pytest.mark.parametrize("space_name,prof", CASES)
def test_mutator_never_leaves_the_profile(spaces, space_name, prof):
    sp = spaces[space_name]
    rng = np.random.default_rng(7)
    profile = load_insight(sp, prof, rng)
    ops = sp.ops
    if prof.endswith("_random"):
        base = named_profile(sp, prof[:-7])
        assert [len(c) for c in profile.candidates] == [len(c) for c in base.candidates]
        assert (profile.min_layers, profile.max_layers) == (base.min_layers, base.max_layers)
    m = Mutator(sp, profile, resolution_prob=0.3)

    def ok(a: Arch):
        sp.validate(a)  # the space's own check (units, depths, tokens, one ResNet width per unit)
        assert profile_fits(sp, profile, a, ops, m.resolutions), a
        for u, layers in enumerate(a.units):
            assert profile.min_layers[u] <= len(layers) <= profile.max_layers[u]

    starts = m.sample(rng, 200)
    for a in starts:
        ok(a)
    depth_moved = token_moved = res_moved = changed = 0
    for a in starts[:40]:
        for _ in range(40):
            b = m.mutate(a, rng)
            ok(b)
            changed += b != a
            depth_moved += b.depths != a.depths
            token_moved += any(x != y for ua, ub in zip(a.units, b.units) for x, y in zip(ua, ub))
            res_moved += b.resolution != a.resolution
            a = b
    assert changed == 1600  # every mutation edits something
    assert token_moved > 100 and res_moved > 100
    assert depth_moved > (0 if profile.min_layers == profile.max_layers else 100)
    for i in range(150):
        x, y = starts[i], starts[-1 - i]
        ok(m.gene_mutate(x, 0.3, 0.5, rng))
        ok(m.crossover(x, y, rng))
        s = m.shrink(x, rng)
        if s is not None:
            ok(s)
    packed = m.pack(starts)  # the evolution's batched operators
    rows = rng.integers(0, len(starts), size=400)
    kids = m.gene_mutate_rows(packed, rows, 0.3, 0.5, rng) + m.crossover_rows(packed, rows, rows[::-1], rng)
    for k in kids:
        ok(k)
    assert sum(k.depths != starts[r].depths for k, r in zip(kids, rows)) > (0 if profile.min_layers == profile.max_layers else 20)
    assert m.gene_mutate_rows(packed, rows[:50], 0.0, 0.0, rng) == [starts[r] for r in rows[:50]]  # p=0: copies


def test_mutation_is_seeded_and_edits_are_unit_level(spaces):
    sp = spaces["mbv3"]
    prof = named_profile(sp, "note10")
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(3)
        m = Mutator(sp, prof, resolutions=[224])
        a = m.sample(rng, 1)[0]
        seq = [a]
        for _ in range(50):
            seq.append(m.mutate(seq[-1], rng))
        runs.append(seq)
    assert runs[0] == runs[1]
    assert {a.resolution for a in runs[0]} == {224}  # a fixed resolution is never mutated
    # per edited unit: one add, remove or swap (depth changes by at most 1, at most 1 layer differs when equal)
    for a, b in zip(runs[0], runs[0][1:]):
        for ua, ub in zip(a.units, b.units):
            assert abs(len(ua) - len(ub)) <= 1
            if len(ua) == len(ub):
                assert sum(x != y for x, y in zip(ua, ub)) <= 1


def test_mutate_archs_unseen_distinct_and_capped(spaces, tmp_path):
    sp = spaces["mbv3"]
    rng = np.random.default_rng(0)
    m = Mutator(sp, named_profile(sp, "full"))
    parents = m.sample(rng, 5)
    seen = set(parents[:3])
    kids = mutate_archs(m, parents, 57, rng, seen=seen.__contains__, depth=3)
    assert len(kids) == 57 and len(set(kids)) == 57 and not set(kids) & seen
    # a tiny space: one candidate per unit, fixed depth, fixed resolution -> one arch exists; the loop ends
    tiny = load_insight(sp, str(_write_yaml(tmp_path / "tiny_profile.yaml", {
        "unit_candidates": [["mbconv3_e3_k3"]] * 5, "unit_mutate_probs": [0.5] * 5,
        "max_layers": [2] * 5, "min_layers": [2] * 5})), rng)
    tm = Mutator(sp, tiny, resolutions=[160])
    only = tm.sample(rng, 1)[0]
    t0 = time.perf_counter()
    assert mutate_archs(tm, [only], 10, rng, seen=lambda a: a == only) == []
    assert time.perf_counter() - t0 < 5


# ===================================================================== evaluator and checkpoint
class CountingMetric:
    """A real metric that counts the archs it is asked to score."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []
        self.name, self.unit, self.higher_is_better = inner.name, inner.unit, inner.higher_is_better

    def evaluate(self, archs):
        self.seen.extend(archs)
        return self.inner.evaluate(archs)


def test_evaluator_counts_unique_archs_and_reuses_cost_checks(spaces):
    sp = spaces["mbv3"]
    acc, lat = CountingMetric(OFAAccuracyPredictor(sp)), CountingMetric(note10_latency(sp))
    ev = Evaluator({"accuracy": acc, "latency": lat}, "latency")
    a, b, c, d = sp.sample(np.random.default_rng(1), 4)
    idx = ev.score([a, b, a], 0, "init")
    assert ev.evaluations == 2 and idx.tolist() == [0, 1, 0] and len(acc.seen) == 2
    ev.score([b, c, a], 1, "mutation")
    assert ev.evaluations == 3 and len(acc.seen) == 3  # duplicates are free
    costs = ev.cost([d, a, d])
    assert ev.cost_checks == 1 and len(lat.seen) == 4 and costs[0] == costs[2]
    ev.score([d], 2, "mutation")
    assert len(lat.seen) == 4 and ev.values("latency")[3] == costs[0]  # the checked cost is reused
    idx = ev.score([sp.sample(np.random.default_rng(9), 1)[0], b], 3, "x", limit=0)
    assert idx.tolist() == [-1, 1] and ev.evaluations == 4
    # frames rebuild the memo exactly
    ev2 = Evaluator({"accuracy": acc, "latency": lat}, "latency")
    ev2.apply_frame(json.loads(json.dumps(ev.take_frame())))
    assert ev2.archs == ev.archs and ev2.cost_cache == ev.cost_cache
    np.testing.assert_array_equal(ev2.values("accuracy"), ev.values("accuracy"))


def test_checkpoint_cuts_an_uncommitted_journal_tail(tmp_path):
    ck = Checkpoint(tmp_path)
    full = {"fingerprint": {}, "stall": 0, "stop_reason": None, "rng": {}, "strategy": {}, "queries": 0}
    ck.commit({"x": 1}, {**full, "iteration": 0})
    ck.commit({"x": 2}, {**full, "iteration": 1})
    with open(ck.journal, "ab") as f:  # killed mid-append of iteration 2
        f.write(b'{"x": 3, "trunc')
    ck2 = Checkpoint(tmp_path)
    state, frames = ck2.load()
    assert state["iteration"] == 1 and frames == [{"x": 1}, {"x": 2}]
    ck2.commit({"x": 3}, {**full, "iteration": 2})
    assert Checkpoint(tmp_path).load()[1] == [{"x": 1}, {"x": 2}, {"x": 3}]


# ===================================================================== end to end
def outputs(folder: Path) -> dict[str, pd.DataFrame]:
    return {n: pd.read_csv(folder / n) for n in ("scored.csv", "front.csv", "history.csv")}


def test_budget_is_exact_unique_and_tracked(cfg_factory, tmp_path):
    cfg = cfg_factory("task=search", "search.budget=537", "search.init_size=50", "search.budget_per_iter=100",
                      "search.iterations=100", "tracking=local")
    res = execute(cfg, run_dir=tmp_path / "run")
    run = tmp_path / "run"
    scored = pd.read_csv(run / "scored.csv")
    hist = pd.read_csv(run / "history.csv")
    assert res["stop_reason"] == "budget" and len(scored) == 537
    assert not scored.duplicated(["arch", "resolution"]).any()
    assert hist["evaluations"].tolist() == [50, 150, 250, 350, 450, 537]
    assert scored.groupby("iteration").size().tolist() == [50, 100, 100, 100, 100, 87]
    # front.csv is the brute-force front of every scored arch
    want = brute_front(scored.accuracy.values, scored.latency.values)
    assert set(pd.read_csv(run / "front.csv").eval_id) == set(scored.eval_id[want])
    assert hist["hypervolume"].is_monotonic_increasing
    # MLflow: per-iteration measures with steps, the files, the tags
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    r = client.search_runs([client.get_experiment_by_name("blockprof/search").experiment_id])[0]
    hv = client.get_metric_history(r.info.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == list(range(6))
    for key in ("front_size", "evaluations", "best_acc_latency_le_20", "best_acc_latency_le_30"):
        assert len(client.get_metric_history(r.info.run_id, key)) == 6
    assert r.data.metrics["evaluations"] == 537
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"scored.csv", "front.csv", "history.csv", "front.png", "insight_space.yaml"} <= arts
    assert r.data.tags["search.insight"] == "full" and r.data.tags["search.cost"] == "latency"


def test_iteration_bound_and_random_strategy_in_an_insight_space(cfg_factory, tmp_path):
    res = execute(cfg_factory("search=random", "task=search", "search.insight=gpu", "search.budget=10000",
                              "search.iterations=3", "search.init_size=40", "search.budget_per_iter=30",
                              "tracking=none"), run_dir=tmp_path / "r")
    assert res["stop_reason"] == "iterations" and len(res["scored"]) == 40 + 3 * 30
    sp, prof = build_space("mbv3"), res["profile"]
    assert all(profile_fits(sp, prof, sp.parse(t, r)) for t, r in zip(res["scored"].arch, res["scored"].resolution))



def test_the_budget_is_the_stopping_rule(cfg_factory, tmp_path):
    # no search.iterations: a budget beyond init_size + 10 x budget_per_iter is spent in full
    res = execute(cfg_factory("task=search", "search.plot=false", "search.budget=700", "search.init_size=50",
                              "search.budget_per_iter=50", "tracking=none"), run_dir=tmp_path / "r")
    assert res["stop_reason"] == "budget" and len(res["scored"]) == 700
    assert res["history"][-1]["iteration"] == 13


def test_bands_spend_the_budget_near_each_limit(cfg_factory, tmp_path):
    res = execute(cfg_factory("search=bands", "task=search", "search.plot=false", "search.budget=2345",
                              "search.init_size=200", "search.budget_per_iter=250", "tracking=none"),
                  run_dir=tmp_path / "r")
    scored, strat = res["scored"], res["strategy"]
    assert res["stop_reason"] == "budget" and len(scored) == 2345
    assert not scored.duplicated(["arch", "resolution"]).any()
    assert strat.limits == [15.0, 20.0, 25.0, 30.0]
    origins = scored.origin.value_counts()
    assert origins["init"] == 200 and origins["front"] > 0
    width = strat.cfg.band_width
    for lim in strat.limits:
        band = scored[scored.origin == f"band_{lim:g}"]
        assert len(band) > 100
        assert (band.latency <= lim + 1e-9).all()  # a band never scores an arch over its limit ...
        assert (band.latency >= lim * (1 - width)).mean() > 0.9  # ... and almost only archs just under it
    # cost checks are counted, not cached (nor journaled)
    last = res["history"][-1]
    assert last["cost_checks"] > len(scored) - 200 and not strat.ev.cost_cache
    # the best under each limit is a band's child, not the random initial set's
    for lim in strat.limits:
        under = scored[scored.latency <= lim]
        assert under.loc[under.accuracy.idxmax(), "origin"] != "init"
    # every row carries its arch as OFA's arch dict, the same arch again
    sp = build_space("mbv3")
    front = pd.read_csv(tmp_path / "r" / "front.csv")
    for table in (scored.sample(200, random_state=0), front):
        for text, r, cfg in zip(table.arch, table.resolution, table.ofa_config):
            d = json.loads(cfg)
            assert set(d) == {"ks", "e", "d", "r"} and len(d["ks"]) == len(d["e"]) == 20 and len(d["d"]) == 5
            assert sp.from_ofa(d) == sp.parse(text, r) and d == sp.to_ofa(sp.parse(text, r))


def test_ofa_config_column_is_to_ofa_for_every_family(spaces):
    from blockprof.app.tasks.search import ofa_configs
    for name in ("mbv3", "resnet50"):
        sp = build_space(name)
        archs = sp.sample(np.random.default_rng(3), 300)
        col = ofa_configs(sp, archs)["ofa_config"]
        assert [json.loads(c) for c in col] == [sp.to_ofa(a) for a in archs]
        assert all(sp.from_ofa(json.loads(c)) == a for c, a in zip(col, archs))


def test_bands_rejects_bad_options(cfg_factory, tmp_path):
    for bad, needle in (("search.band_width=1.5", "band_width"), ("search.parents=0", "parents"),
                        ("search.gene_share=0.8", r"gene_share \+ search.crossover_share")):
        with pytest.raises(UserError, match=needle):
            execute(cfg_factory("search=bands", "task=search", "search.budget=300", bad, "tracking=none"),
                    run_dir=tmp_path / bad.split("=")[0])

def crash_at(monkeypatch, iteration: int, after_commit: bool):
    real = SearchRunner._commit

    def commit(self, it, *args):
        if not after_commit and it == iteration:
            raise RuntimeError("simulated crash before the commit")
        real(self, it, *args)
        if after_commit and it == iteration:
            raise RuntimeError("simulated crash after the commit")

    monkeypatch.setattr(SearchRunner, "_commit", commit)


@pytest.mark.parametrize("strategy,extra,crash", [
    ("rm_pareto", ["search.insight=note10_random", "search.mutation_depth=2"], (3, True)),
    ("rm_pareto", ["search.pareto_runs=2"], (0, True)),
    ("evolution", ["search.budget=900", "search.population_size=60", "search.constraint.latency=22"], (4, False)),
    ("rm_cons_acc", ["search.constraint.latency=18", "search.init_size=30"], (2, False)),
    ("bands", ["search.budget=1300", "search.budget_per_iter=150"], (3, False)),
    ("bands", ["search.budget=1000", "search.budget_per_iter=120", "search.insight=note10"], (1, True)),
])
def test_resume_after_a_crash_ends_identical(cfg_factory, tmp_path, monkeypatch, strategy, extra, crash):
    overrides = [f"search={strategy}", *(BASE if strategy == "evolution" else SMALL), *extra, "tracking=none"]
    if strategy == "bands":
        overrides += ["search.init_size=100"]
    ref = execute(cfg_factory(*overrides), run_dir=tmp_path / "ref")
    with monkeypatch.context() as mp:
        crash_at(mp, *crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            execute(cfg_factory(*overrides), run_dir=tmp_path / "crashed")
    state = json.loads((tmp_path / "crashed" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == (crash[0] if crash[1] else crash[0] - 1)
    again = execute(cfg_factory(*overrides), run_dir=tmp_path / "crashed")
    for name, df in outputs(tmp_path / "ref").items():
        pd.testing.assert_frame_equal(df, outputs(tmp_path / "crashed")[name], check_exact=True)
    assert again["stop_reason"] == ref["stop_reason"]
    # a finished run started again changes nothing
    execute(cfg_factory(*overrides), run_dir=tmp_path / "crashed")
    pd.testing.assert_frame_equal(outputs(tmp_path / "ref")["scored.csv"], outputs(tmp_path / "crashed")["scored.csv"])


def test_killed_process_resumes_with_the_same_command(cfg_factory, tmp_path):
    out, run = tmp_path / "outputs", tmp_path / "run"
    search = ["task=search", "search.budget=4000", "search.budget_per_iter=40", "search.init_size=40",
              "search.iterations=2000", "search.plot=false", "tracking=none"]
    args = [*search, f"paths.output_root={out}", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["iteration"] >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the search ended before it could be killed"
    killed_at = json.loads(state.read_text())["iteration"]
    assert 3 <= killed_at < 99 and not (run / "scored.csv").exists()
    resumed = run_cli(args, cwd=tmp_path)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at iteration {killed_at}" in resumed.stdout
    execute(cfg_factory(*search), run_dir=tmp_path / "ref")  # uninterrupted, same seed
    for name, df in outputs(tmp_path / "ref").items():
        pd.testing.assert_frame_equal(df, outputs(run)[name], check_exact=True)
    assert len(outputs(run)["scored.csv"]) == 4000


def test_resume_refuses_a_different_search(cfg_factory, tmp_path):
    execute(cfg_factory(*SMALL, "tracking=none"), run_dir=tmp_path / "run")
    with pytest.raises(UserError, match=r"different search \(differs in: search.budget_per_iter"):
        execute(cfg_factory(*SMALL, "search.budget_per_iter=30", "tracking=none"), run_dir=tmp_path / "run")
    # a smaller budget cannot continue it (a larger one does: tests/test_search_continue.py)
    with pytest.raises(UserError, match=r"differs in: search.budget\); a checkpoint continues only to larger"):
        execute(cfg_factory(*SMALL, "search.budget=400", "tracking=none"), run_dir=tmp_path / "run")
    with pytest.raises(UserError, match="holds no search checkpoint"):
        execute(cfg_factory(*SMALL, "tracking=none", f"task.resume_dir={tmp_path / 'nothing'}"), run_dir=tmp_path / "x")
    # task.resume_dir continues (here: re-finishes) the search kept in that folder
    res = execute(cfg_factory(*SMALL, "tracking=none", f"task.resume_dir={tmp_path / 'run'}"), run_dir=tmp_path / "new")
    assert res["work_dir"] == tmp_path / "run" and not (tmp_path / "new" / "scored.csv").exists()


def test_constrained_strategies_keep_to_the_constraint(cfg_factory, tmp_path):
    res = execute(cfg_factory("search=rm_cons_acc", "space=resnet50", "metric=no_latency", "task=search", "search.budget=300",
                              "search.constraint.mmacs=1500", "tracking=none"), run_dir=tmp_path / "res")
    scored = res["scored"]
    assert (scored["mmacs"] <= 1500).all() and "latency" not in scored.columns  # auto -> mmacs
    best = pd.read_csv(tmp_path / "res" / "best.csv")
    assert len(best) == 10 and best.accuracy.is_monotonic_decreasing
    assert best.accuracy.iloc[0] == scored.accuracy.max()
    assert (tmp_path / "res" / "front.png").stat().st_size > 10_000
    res = execute(cfg_factory("search=evolution", "task=search", "search.budget=700", "search.population_size=50",
                              "search.constraint.latency=16", "search.plot=false", "tracking=none"),
                  run_dir=tmp_path / "evo")
    scored = res["scored"]
    assert len(scored) == 700 and (scored["latency"] <= 16).all()
    assert set(scored.origin) == {"init", "mutation", "crossover"}
    assert len(res["strategy"].population) <= 12 + 50


# ===================================================================== from_profile
def write_profile_run(space, metrics, folder: Path, n: int = 12, seed: int = 0) -> pd.DataFrame:
    """A block-profiling run folder in the profile task's format: summary.csv, one row per
    slot (common random archs, the slot forced) plus the `random` baseline row."""
    rng = np.random.default_rng(seed)
    base = space.sample(rng, n)
    slots = space.slots()
    groups = [base] + [space.force_all(base, [s], rng) for s in slots]
    vals = score(metrics, [a for g in groups for a in g])
    rows = []
    for gi, slot in enumerate([None] + slots):
        row = {**space.slot_columns(slot), "block": "random" if slot is None else slot.block, "resolution": None,
               "description": "Random baseline" if slot is None else space.describe(slot), "n": n}
        for m, v in vals.items():
            x = v[gi * n:(gi + 1) * n]
            row.update({f"{m}_mean": x.mean(), f"{m}_std": x.std(ddof=1), f"{m}_q01": np.quantile(x, 0.01),
                        f"{m}_q05": np.quantile(x, 0.05), f"{m}_q95": np.quantile(x, 0.95),
                        f"{m}_q99": np.quantile(x, 0.99), f"{m}_min": x.min(), f"{m}_max": x.max()})
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(folder / "summary.csv", index=False)
    return df


@pytest.fixture(scope="module")
def mbv3_profile_run(tmp_path_factory):
    sp = build_space("mbv3")
    folder = tmp_path_factory.mktemp("profile") / "mbv3"
    df = write_profile_run(sp, {"accuracy": OFAAccuracyPredictor(sp), "mmacs": mmacs_metric(sp),
                                "latency": note10_latency(sp)}, folder)
    return folder, df


def test_from_profile_rule(mbv3_profile_run, spaces):
    folder, df = mbv3_profile_run
    sp = spaces["mbv3"]
    prof = load_insight(sp, "from_profile", np.random.default_rng(0), profile_run=str(folder))
    full = named_profile(sp, "full")
    ev = prof.notes["evidence"]
    assert prof.name == "from_profile" and prof.min_layers == full.min_layers
    reduced = False
    slots = df[df.block != "random"]
    for u in range(5):  # recompute the rule from the summary itself
        per = slots[slots.unit == u].groupby("block")[["accuracy_mean", "latency_mean"]].mean()
        A, C = per.accuracy_mean.values, per.latency_mean.values
        want = [b for b, keep in zip(per.index, non_dominated(A, C)) if keep]
        assert sorted(prof.candidates[u]) == sorted(want) and len(want) >= 2
        assert [b for b, e in ev["candidates"][f"unit_{u}"].items() if e["kept"]] == list(prof.candidates[u])
        for b, a, c in zip(per.index, A, C):  # every dropped block is beaten on both means by a kept one
            if b not in want:
                reduced = True
                assert any(a2 >= a and c2 <= c for b2, a2, c2 in zip(per.index, A, C) if b2 in want)
    assert reduced
    assert all(lo <= hi <= 4 for lo, hi in zip(prof.min_layers, prof.max_layers))
    sens = [ev["sensitivity"][f"unit_{u}"] for u in range(5)]
    assert prof.mutate_probs[int(np.argmax(sens))] == 0.5 and prof.mutate_probs[int(np.argmin(sens))] == 0.25
    depth = ev["depth"]
    for u in range(5):
        d = depth[f"unit_{u}"]
        assert d["dropped"] == (prof.max_layers[u] == 3)
        assert d["dropped"] == (d["price"] < 0.5 * depth["median_price"])


def test_from_profile_search_writes_and_logs_its_profile(mbv3_profile_run, cfg_factory, tmp_path):
    folder, df = mbv3_profile_run
    res = execute(cfg_factory(*SMALL, "search.insight=from_profile", f"search.profile_run={folder}", "tracking=local"),
                  run_dir=tmp_path / "run")
    written = tmp_path / "run" / "insight_space.yaml"
    data = yaml.safe_load(written.read_text())
    assert data["profile"] == "from_profile" and data["source"].endswith("summary.csv")
    assert data["unit_candidates"] == [list(c) for c in res["profile"].candidates]
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("blockprof/search")
    r = client.search_runs([exp.experiment_id])[0]
    assert "insight_space.yaml" in {a.path for a in client.list_artifacts(r.info.run_id)}
    # the written YAML is itself a valid search.insight (same schema)
    again = execute(cfg_factory(*SMALL, f"search.insight={written}", "tracking=none"), run_dir=tmp_path / "again")
    assert again["profile"].candidates == res["profile"].candidates
    assert again["profile"].max_layers == res["profile"].max_layers
    sp = build_space("mbv3")
    assert all(profile_fits(sp, res["profile"], sp.parse(t, r))
               for t, r in zip(res["scored"].arch, res["scored"].resolution))
    # ...and by MLflow run id: a profile run logged to the same store
    cfg = cfg_factory("task=profile", "tracking=local")
    with track_run(cfg, tmp_path / "prof_run", task="profile") as tr:
        tr.log_table(df, "summary.csv")
        run_id = tr.run_id
    by_id = execute(cfg_factory(*SMALL, "search.insight=from_profile", f"search.profile_run={run_id}", "tracking=local"),
                    run_dir=tmp_path / "by_id")
    assert by_id["profile"] == res["profile"] and by_id["profile"].notes["source"] == f"mlflow run {run_id}"


def test_from_profile_resnet_widths(spaces, tmp_path):
    sp = spaces["resnet50"]
    df = write_profile_run(sp, {"accuracy": OFAAccuracyPredictor(sp), "mmacs": mmacs_metric(sp)}, tmp_path / "p", n=6)
    prof = derive_from_summary(sp, df, cost="mmacs", rule=FromProfileRule(min_candidates=1), source="test")
    assert all(set(c) <= {0, 1, 2} and c for c in prof.candidates)
    assert prof.max_layers[0] == prof.min_layers[0] == 1
    assert "unit_width_indices" in yaml.safe_load(prof.to_yaml(sp.ops))


def test_from_profile_bad_summaries(mbv3_profile_run, spaces, tmp_path):
    folder, df = mbv3_profile_run
    sp = spaces["mbv3"]
    df.drop(columns=["latency_mean"]).to_csv(tmp_path / "summary.csv", index=False)
    with pytest.raises(UserError, match="lacks column\\(s\\) latency_mean"):
        load_insight(sp, "from_profile", None, profile_run=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no summary.csv"):
        load_insight(sp, "from_profile", None, profile_run=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="needs search.profile_run"):
        load_insight(sp, "from_profile", None)
    with pytest.raises(UserError, match="neither a profile run folder"):
        load_insight(sp, "from_profile", None, profile_run="no/such/run")


# ===================================================================== one-line errors
def _write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


GOOD = {"unit_candidates": [["mbconv3_e3_k3", "mbconv3_e6_k7"]] * 5, "unit_mutate_probs": [0.5] * 5,
        "max_layers": [4] * 5, "min_layers": [2] * 5}


@pytest.mark.parametrize("change,needle", [
    ({"unit_candidates": [["mbconv3_e3_k3"]] * 4}, "unit_candidates has 4 units, the space has 5"),
    ({"unit_candidates": [["mbconv3_e3_k3"]] * 4 + [["mbconv3_e5_k3"]]}, "unit 4 lists unknown block 'mbconv3_e5_k3'"),
    ({"min_layers": [2, 2, 4, 2, 2], "max_layers": [4, 4, 3, 4, 4]}, "unit 2 has min_layers 4 > max_layers 3"),
    ({"max_layers": [5, 4, 4, 4, 4]}, "unit 0 allows 2..5 layers, the space allows 2..4"),
    ({"unit_mutate_probs": [0, 0, 0, 0, 0]}, "every unit mutation probability is 0"),
    ({"unit_mutate_probs": [0.5, 2, 0.5, 0.5, 0.5]}, "unit 1 mutation probability 2"),
    ({"max_layer": [4] * 5}, "unknown key(s) ['max_layer']"),
    ({"unit_width_indices": [[0]] * 5}, "uses 'unit_width_indices'"),
])
def test_bad_insight_profiles_fail_in_one_line(cfg_factory, tmp_path, change, needle):
    path = _write_yaml(tmp_path / "bad.yaml", {**GOOD, **change})
    with pytest.raises(UserError) as exc:
        execute(cfg_factory(*SMALL, f"search.insight={path}", "tracking=none"), run_dir=tmp_path / "run")
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg
    assert not (tmp_path / "run" / "scored.csv").exists()


def test_a_wrongly_typed_search_option_fails_while_composing(cfg_factory):
    with pytest.raises(UserError, match="search.budget: Value 'lots'"):  # the schema types every strategy option
        cfg_factory("task=search", "search.budget=lots", "tracking=none")


@pytest.mark.parametrize("overrides,needle", [
    (["search=rm_cons_acc", "search.constraint.latency=1", "search.init_max_checks=3000"],
     "no arch of the search space meets latency <= 1"),
    (["search=evolution", "search.insight=max_acc", "search.constraint.latency=10", "search.init_max_checks=3000"],
     "no arch of the search space meets latency <= 10"),
    (["search=rm_cons_acc", "space=resnet50", "metric=no_latency", "search.constraint.mmacs=100",
      "search.init_max_checks=2000"],
     "no arch of the search space meets mmacs <= 100"),
    (["search._target_=search.strategies.Nope", "search.name=nope"], "unknown search strategy 'nope'"),
    (["search._target_=blockprof.space.Arch"], "unknown search strategy 'rm_pareto'"),
    (["+search.mutation_deph=2"], "unknown config key 'search.mutation_deph'"),
    (["search.budget=0"], "search.budget must be >= 1"),
    (["search=evolution", "search.constraint.latency=null"], "search.constraint.latency is not set"),
    (["space=pn", "device=note10", "search.insight=max_acc"], "set metric.accuracy.source=supernet"),
    (["space=pn", "search.insight=note10"], "metric.accuracy.source=supernet"),
    (["space=resnet50", "metric=no_latency", "search.cost=latency"], "search.cost=latency, but this run's metrics are"),
    (["metric.names=[mmacs,latency]"], "search needs the accuracy metric"),
    (["search.insight=tpu"], "unknown search.insight 'tpu' for space mbv3 (choose from full, npu"),
    (["search.resolutions=[100]"], "resolution 100 is not in space mbv3"),
])
def test_search_errors_are_one_line(cfg_factory, tmp_path, overrides, needle):
    cfg = cfg_factory(*(BASE if "search=evolution" in overrides else SMALL), *overrides, "tracking=none")
    with pytest.raises(UserError) as exc:
        execute(cfg, run_dir=tmp_path / "run")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_pn_profiles_load_and_pn_names_no_note10(spaces):
    sp = spaces["pn"]
    for name in ("full", "npu", "gpu", "cpu", "max_acc"):
        p = named_profile(sp, name)
        assert p.max_layers[5] == p.min_layers[5] == 1 and len(p.candidates) == 6
    with pytest.raises(UserError, match="unknown search.insight 'note10' for space pn"):
        load_insight(sp, "note10", np.random.default_rng(0))
    r1 = random_variant(sp, named_profile(sp, "npu"), np.random.default_rng(1))
    r2 = random_variant(sp, named_profile(sp, "npu"), np.random.default_rng(1))
    assert r1 == r2 and r1.name == "npu_random"


def test_cli_errors_exit_2_in_one_line(tmp_path):
    for args, needle in ((["task=search", "search=nope"], "unknown search 'nope'"),
                         (["task=search", "space=pn", "device=note10", "search.insight=max_acc"],
                          "metric.accuracy.source=supernet")):
        p = run_cli([*args, "tracking=none", f"paths.output_root={tmp_path}"], cwd=tmp_path)
        lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
        assert "Traceback" not in p.stderr
