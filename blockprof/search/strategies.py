"""Search strategies (the `search` config group): each is a class named by `_target_`
with a dataclass schema that validates its YAML.

- `RMPareto` (rm_pareto): the paper's random-mutation Pareto search. A random initial
  set; each iteration mutates the archs of the first `pareto_runs` non-dominated
  layers (accuracy vs cost) into `budget_per_iter` unseen archs and scores them.
- `RMConsAcc` (rm_cons_acc): the same mutator on the top-k archs by accuracy among
  those meeting a constraint on the cost metric (the seed's constrained search).
- `Evolution` (evolution): OFA's constrained genetic search (population, parent ratio,
  mutation and crossover; every child redrawn until it meets the constraint, capped).
- `Bands` (bands): one run for every budget in `cost_limits`: per limit, OFA-style
  evolution (gene mutation, crossover, unit edits) whose children are cost-checked
  first and scored only when they cost just under the limit; a share of each
  iteration mutates the whole front (hypervolume). One memo for all.
- `RandomSearch` (random): uniform samples of the (insight) space at the same budget.

A strategy sees only the space's mutator, the evaluator (the memo of scored archs)
and the seeded generator. Iteration 0 is the initial set. The runner stops at
`budget` unique evaluations (the stopping rule), after `iterations` iterations when
that is set, or after `stall_iterations` iterations in a row that found nothing new.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from blockprof.common.errors import UserError
from blockprof.common.plugins import register_schema
from blockprof.core.space import Arch
from blockprof.search.evaluator import Evaluator
from blockprof.search.insight import FromProfileRule
from blockprof.search.mutation import Mutator, mutate_archs
from blockprof.search.pareto import best_under, front_order, hypervolume, non_dominated, pareto_layers

ACCURACY = "accuracy"
FEASIBLE_EPS = 1e-9


# ===================================================================== schemas
@dataclass
class SearchConfig:
    _target_: str = "blockprof.search.strategies.RMPareto"
    name: str = "rm_pareto"
    insight: str = "full"                   # full | npu | gpu | cpu | note10 | max_acc | <name>_random | from_profile | file.yaml
    profile_run: Optional[str] = None       # from_profile: profile run folder, its summary.csv, or MLflow run id
    from_profile: FromProfileRule = field(default_factory=FromProfileRule)
    cost: str = "auto"                      # latency | mmacs | params_m | auto (latency if the metric set has it, else mmacs)
    resolutions: Optional[List[int]] = None  # null: the space's; a subset restricts the search (one value fixes it)
    budget: int = 2100                      # unique archs scored, initial set included
    iterations: Optional[int] = None        # null: run until the budget is spent; n: stop after n iterations too
    stall_iterations: int = 3               # stop after this many iterations in a row without a new arch
    hv_reference: Dict[str, Any] = field(default_factory=lambda: {"accuracy": None, "latency": None, "mmacs": None})
    # latency: null -> the device's (blockprof.app.device.device_costs); null otherwise -> quantiles of the initial set
    cost_limits: Dict[str, Any] = field(default_factory=lambda: {"latency": None, "mmacs": None})
    plot: bool = True


@dataclass
class RMParetoConfig(SearchConfig):
    init_size: int = 100
    budget_per_iter: int = 200
    mutation_depth: int = 1                 # edits chained per parent and round
    pareto_runs: int = 1                    # non-dominated layers whose archs are mutated
    resolution_mutate_prob: float = 0.25    # chance that a mutation also moves the resolution
    attempts_per_arch: int = 100            # tries for an unseen child per chain link


@dataclass
class RMConsAccConfig(SearchConfig):
    _target_: str = "blockprof.search.strategies.RMConsAcc"
    name: str = "rm_cons_acc"
    init_size: int = 20
    budget_per_iter: int = 50
    top_k: int = 10
    mutation_depth: int = 1
    resolution_mutate_prob: float = 0.25
    attempts_per_arch: int = 100
    constraint: Dict[str, Any] = field(default_factory=lambda: {"latency": 20.0, "mmacs": 2000.0})
    filter_rounds: int = 10                 # mutation rounds per iteration to find archs under the constraint
    init_max_checks: int = 50000           # random archs cost-checked for the initial set ...
    repair_rounds: int = 40                 # ... then cost-lowering edits on the cheapest of them


@dataclass
class EvolutionConfig(SearchConfig):
    _target_: str = "blockprof.search.strategies.Evolution"
    name: str = "evolution"
    budget: int = 50000
    iterations: int = 500                   # OFA's max_time_budget
    population_size: int = 100
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    arch_mutate_prob: float = 0.1
    resolution_mutate_prob: float = 0.5
    constraint: Dict[str, Any] = field(default_factory=lambda: {"latency": 20.0, "mmacs": 2000.0})
    child_attempts: int = 100               # redraws of a child over the constraint (OFA: unbounded)
    init_max_checks: int = 50000
    repair_rounds: int = 40


@dataclass
class BandsConfig(SearchConfig):
    _target_: str = "blockprof.search.strategies.Bands"
    name: str = "bands"
    budget: int = 20000
    iterations: Optional[int] = None
    init_size: int = 400
    budget_per_iter: int = 400
    front_share: float = 0.2                # of each iteration: unit-level mutation of the whole front (hypervolume)
    band_shares: str = "equal"              # split of the rest: "equal" | "limit" (in proportion to each limit)
    band_width: float = 0.04                # a band's children cost within [limit x (1 - band_width), limit]
    parents: int = 32                       # per band: the best archs under its limit
    gene_share: float = 0.5                 # of a band's candidates: OFA gene mutation ...
    crossover_share: float = 0.25           # ... crossover; the rest: unit-level add/remove/swap edits
    arch_mutate_prob: float = 0.1
    resolution_mutate_prob: float = 0.25
    candidates_per_child: int = 8           # cost-checked candidates drawn per child wanted, per round
    child_rounds: int = 6
    attempts_per_arch: int = 100


@dataclass
class RandomConfig(SearchConfig):
    _target_: str = "blockprof.search.strategies.RandomSearch"
    name: str = "random"
    init_size: int = 100
    budget_per_iter: int = 200


def _positive_numbers(values) -> bool:
    return (isinstance(values, (list, tuple)) and len(values) > 0
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf") for x in values))


def _positive(cfg, *keys):
    for k in keys:
        v = getattr(cfg, k)
        if v < 1:
            raise UserError(f"search.{k} must be >= 1, not {v}")


def _prob(cfg, *keys):
    for k in keys:
        v = getattr(cfg, k)
        if not 0 <= v <= 1:
            raise UserError(f"search.{k} must be in [0, 1], not {v}")


# ===================================================================== base
# name -> class of every strategy defined so far (built-ins below, plugins when imported)
STRATEGIES: dict[str, type] = {}


class Strategy(ABC):
    """Shared machinery: budget, initial samplers, measures, state.

    A subclass with its own `Config` (a dataclass with a `name` default) registers
    itself when its module is imported: `schema/search/<name>` in Hydra's ConfigStore
    and `STRATEGIES[<name>]`; its YAML then starts from `/schema/search/<name>@_here_`."""
    Config = SearchConfig
    constrained = False
    caches_costs = True   # keep (and journal) every cost-only check: rm_cons_acc asks which were checked

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_schema("search", cls, STRATEGIES)

    def __init__(self, cfg, mutator: Mutator, evaluator: Evaluator, rng: np.random.Generator):
        self.cfg, self.mutator, self.ev, self.rng = cfg, mutator, evaluator, rng
        evaluator.cache_costs = self.caches_costs
        self.cost_name = evaluator.cost_name
        self.limit: float | None = None
        self.hv_ref: tuple[float, float] | None = None
        self.limits: list[float] = []
        self.check()
        if self.constrained:
            v = (cfg.constraint or {}).get(self.cost_name)
            if v is None:
                raise UserError(f"search.constraint.{self.cost_name} is not set: {cfg.name} needs a bound on {self.cost_name}")
            if not _positive_numbers([v]):
                raise UserError(f"search.constraint.{self.cost_name} must be a positive number, not {v!r}")
            self.limit = float(v)

    def check(self) -> None:
        c = self.cfg
        _positive(c, "budget", "stall_iterations")
        if c.iterations is not None and c.iterations < 0:
            raise UserError(f"search.iterations must be >= 0, not {c.iterations}")
        # checked here, not when the limits are first used after the initial set: by then the
        # run has opened
        for key, lim in (c.cost_limits or {}).items():
            if lim is not None and not _positive_numbers(lim):
                raise UserError(f"search.cost_limits.{key} must be a non-empty list of positive numbers (or null: "
                                f"the initial set's quartiles), not {lim!r}")

    # ------------------------------------------------------------ hooks
    @abstractmethod
    def initialize(self) -> None:
        """Score the initial set (iteration 0)."""

    @abstractmethod
    def step(self, it: int) -> None:
        """Score one iteration's archs."""

    def state_dict(self) -> dict:
        return {"hv_ref": list(self.hv_ref) if self.hv_ref else None, "limits": self.limits}

    def load_state_dict(self, d: dict) -> None:
        self.hv_ref = tuple(d["hv_ref"]) if d.get("hv_ref") else None
        self.limits = [float(x) for x in d.get("limits", [])]

    # ------------------------------------------------------------ helpers
    @property
    def remaining(self) -> int:
        return max(0, int(self.cfg.budget) - self.ev.evaluations)

    def acc(self) -> np.ndarray:
        return self.ev.values(ACCURACY)

    def cost(self) -> np.ndarray:
        return self.ev.values(self.cost_name)

    def sample_unique(self, n: int, rounds: int = 50) -> list[Arch]:
        """n archs inside the profile, never scored, distinct (fewer if the space runs out)."""
        out, local = [], set()
        for _ in range(rounds):
            if len(out) >= n:
                break
            for a in self.mutator.sample(self.rng, max(n - len(out), 16)):
                if a not in self.ev and a not in local:
                    local.add(a)
                    out.append(a)
        return out[:n]

    def sample_feasible(self, n: int) -> list[Arch]:
        """n distinct archs meeting the constraint: random samples cost-checked in batches
        (up to init_max_checks), then cost-lowering edits on the cheapest failures."""
        c = self.cfg
        out, local = [], set()
        cheapest: list[tuple[float, int, Arch]] = []
        checked, order = 0, 0
        batch = max(4 * n, 1024)
        while len(out) < n and checked < c.init_max_checks:
            archs = self.mutator.sample(self.rng, min(batch, c.init_max_checks - checked))
            costs = self.ev.cost(archs)
            checked += len(archs)
            for a, v in zip(archs, costs):
                if v <= self.limit + FEASIBLE_EPS:
                    if a not in local and a not in self.ev:
                        local.add(a)
                        out.append(a)
                else:
                    cheapest.append((float(v), order, a))
                    order += 1
            cheapest = sorted(cheapest)[: 4 * n]
        pool = [a for _, _, a in sorted(cheapest)[: 4 * n]]
        for _ in range(c.repair_rounds):
            if len(out) >= n or not pool:
                break
            shrunk = [s for s in (self.mutator.shrink(a, self.rng) for a in pool) if s is not None]
            if not shrunk:
                break
            costs = self.ev.cost(shrunk)
            pool = []
            for a, v in zip(shrunk, costs):
                if v <= self.limit + FEASIBLE_EPS:
                    if a not in local and a not in self.ev:
                        local.add(a)
                        out.append(a)
                else:
                    pool.append(a)
                    cheapest.append((float(v), order, a))
                    order += 1
        if not out:
            best = min(cheapest)[0] if cheapest else float("nan")
            raise UserError(f"no arch of the search space meets {self.cost_name} <= {self.limit:g} "
                            f"(the cheapest of {self.ev.cost_checks} checked: {best:.4g}); raise search.constraint.{self.cost_name}")
        return out[:n]

    def feasible(self) -> np.ndarray:
        return self.cost() <= self.limit + FEASIBLE_EPS

    def setup_measures(self) -> None:
        """Reference point and cost limits: configured, else from the initial set."""
        acc, cost = self.acc(), self.cost()
        ref = self.cfg.hv_reference or {}
        ra = ref.get(ACCURACY)
        rc = ref.get(self.cost_name)
        self.hv_ref = (float(ra) if ra is not None else float(np.min(acc)),
                       float(rc) if rc is not None else float(np.max(cost)))
        lim = (self.cfg.cost_limits or {}).get(self.cost_name)
        if lim is None:
            lim = [float(f"{q:.3g}") for q in np.quantile(cost, [0.25, 0.5, 0.75])]
        if not isinstance(lim, (list, tuple)) or not all(isinstance(x, (int, float)) for x in lim):
            raise UserError(f"search.cost_limits.{self.cost_name} must be a list of numbers, not {lim!r}")
        self.limits = [float(x) for x in lim]

    def measures(self) -> dict[str, float]:
        acc, cost = self.acc(), self.cost()
        front = non_dominated(acc, cost)
        m = {"evaluations": float(self.ev.evaluations), "queries": float(self.ev.queries),
             "cost_checks": float(self.ev.cost_checks),
             "front_size": float(front.sum()), "hypervolume": hypervolume(acc, cost, *self.hv_ref),
             "best_accuracy": float(np.max(acc))}
        for lim, v in zip(self.limits, best_under(acc, cost, self.limits)):
            m[limit_key(self.cost_name, lim)] = float(v)
        if self.constrained:
            ok = self.feasible()
            m["best_feasible_accuracy"] = float(acc[ok].max()) if ok.any() else float("nan")
        return m

    def selected(self) -> np.ndarray:
        """Memo indices of the strategy's current parents (for the final tables)."""
        return np.flatnonzero(non_dominated(self.acc(), self.cost()))


def limit_key(cost: str, limit: float) -> str:
    return f"best_acc_{cost}_le_{limit:g}"


# ===================================================================== rm_pareto
class RMPareto(Strategy):
    Config = RMParetoConfig

    def check(self):
        super().check()
        _positive(self.cfg, "init_size", "budget_per_iter", "mutation_depth", "pareto_runs", "attempts_per_arch")

    def initialize(self):
        self.ev.score(self.sample_unique(min(self.cfg.init_size, self.cfg.budget)), 0, "init")

    def parents(self) -> list[Arch]:
        """The archs of the first `pareto_runs` non-dominated layers, cheapest first."""
        acc, cost = self.acc(), self.cost()
        idx = front_order(acc, cost, pareto_layers(acc, cost, self.cfg.pareto_runs))
        return [self.ev.archs[i] for i in idx]

    def step(self, it):
        n = min(self.cfg.budget_per_iter, self.remaining)
        kids = mutate_archs(self.mutator, self.parents(), n, self.rng, seen=self.ev.__contains__,
                            depth=self.cfg.mutation_depth, attempts_per_arch=self.cfg.attempts_per_arch)
        self.ev.score(kids, it, "mutation")


# ===================================================================== rm_cons_acc
class RMConsAcc(Strategy):
    Config = RMConsAccConfig
    constrained = True

    def check(self):
        super().check()
        _positive(self.cfg, "init_size", "budget_per_iter", "top_k", "mutation_depth", "attempts_per_arch",
                  "filter_rounds", "init_max_checks")

    def initialize(self):
        self.ev.score(self.sample_feasible(min(self.cfg.init_size, self.cfg.budget)), 0, "init")

    def top(self) -> np.ndarray:
        acc = self.acc()
        ok = np.flatnonzero(self.feasible())
        return ok[np.argsort(-acc[ok], kind="stable")][: self.cfg.top_k]

    def selected(self):
        return self.top()

    def step(self, it):
        n = min(self.cfg.budget_per_iter, self.remaining)
        parents = [self.ev.archs[i] for i in self.top()]
        seen = lambda a: a in self.ev or a in self.ev.cost_cache  # noqa: E731  (scored, or checked and over)
        picked: list[Arch] = []
        for _ in range(self.cfg.filter_rounds):
            need = n - len(picked)
            if need <= 0:
                break
            kids = mutate_archs(self.mutator, parents, need, self.rng, seen=seen,
                                depth=self.cfg.mutation_depth, attempts_per_arch=self.cfg.attempts_per_arch)
            if not kids:
                break
            costs = self.ev.cost(kids)
            picked += [a for a, v in zip(kids, costs) if v <= self.limit + FEASIBLE_EPS]
        self.ev.score(picked[:n], it, "mutation")


# ===================================================================== evolution
class Evolution(Strategy):
    Config = EvolutionConfig
    constrained = True

    def check(self):
        super().check()
        c = self.cfg
        _positive(c, "population_size", "child_attempts", "init_max_checks")
        _prob(c, "parent_ratio", "mutation_ratio", "arch_mutate_prob", "resolution_mutate_prob")
        if round(c.parent_ratio * c.population_size) < 1:
            raise UserError("search.parent_ratio x search.population_size must keep at least one parent")
        self.population: list[int] = []

    def initialize(self):
        pop = self.sample_feasible(min(self.cfg.population_size, self.cfg.budget))
        idx = self.ev.score(pop, 0, "init")
        self.population = [int(i) for i in idx if i >= 0]

    def state_dict(self):
        return dict(super().state_dict(), population=self.population)

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.population = [int(i) for i in d["population"]]

    def parents(self) -> list[int]:
        acc = self.acc()
        pop = np.array(self.population, dtype=np.int64)
        order = pop[np.argsort(-acc[pop], kind="stable")]
        return [int(i) for i in order[: max(1, int(round(self.cfg.parent_ratio * self.cfg.population_size)))]]

    def selected(self):
        return np.array(self.parents(), dtype=np.int64)

    def _children(self, n: int, make: Callable[[list[int]], list[Arch]]) -> list[Arch]:
        """n children meeting the constraint. Slot i keeps its parents and is redrawn up
        to child_attempts times; the first draw that meets the constraint is kept (as OFA
        does, one draw after another). Draws are made in rounds of 1, 2, 4, ... per
        pending slot, each round one batch and one cost check."""
        out: list[Arch | None] = [None] * n
        pending, used, per = list(range(n)), 0, 1
        while pending and used < self.cfg.child_attempts:
            per = min(per, self.cfg.child_attempts - used)
            slots = [i for i in pending for _ in range(per)]
            cands = make(slots)
            costs = self.ev.cost(cands)
            for i, a, v in zip(slots, cands, costs):
                if out[i] is None and v <= self.limit + FEASIBLE_EPS:
                    out[i] = a
            pending = [i for i in pending if out[i] is None]
            used += per
            per *= 2
        return [a for a in out if a is not None]

    def step(self, it):
        c, rng, mut = self.cfg, self.rng, self.mutator
        parents = self.parents()
        archs = self.ev.archs
        n_mut = int(round(c.mutation_ratio * c.population_size))
        n_cross = c.population_size - n_mut
        packed = mut.pack([archs[i] for i in parents])
        mum = rng.integers(0, len(parents), size=n_mut)  # each child's parent(s), kept over its redraws
        pa, pb = rng.integers(0, len(parents), size=n_cross), rng.integers(0, len(parents), size=n_cross)
        mutants = self._children(n_mut, lambda slots: mut.gene_mutate_rows(
            packed, mum[slots], c.arch_mutate_prob, c.resolution_mutate_prob, rng))
        crosses = self._children(n_cross, lambda slots: mut.crossover_rows(packed, pa[slots], pb[slots], rng))
        kids = []
        for group, origin in ((mutants, "mutation"), (crosses, "crossover")):
            idx = self.ev.score(group, it, origin, limit=self.remaining)
            kids += [int(i) for i in idx if i >= 0]
        self.population = parents + kids


# ===================================================================== bands
class Bands(Strategy):
    """Per-budget bands around `cost_limits`, sharing one memo of evaluations.

    Each iteration spends `front_share` of its evaluations on unit-level mutation of
    the whole front (the paper's move, for the hypervolume) and splits the rest over
    the cost limits (`band_shares`: evenly, or in proportion to each limit; evenly gives
    the tightest limit, where few archs fit and the front is thin, a full share). For
    limit L, the parents are the `parents` most
    accurate archs scored so far with cost <= L; children come from OFA's gene
    mutation, crossover and unit-level edits, are cost-checked (free), and only
    unseen ones costing within [L x (1 - band_width), L] are scored: the best arch
    under a budget lies just under it, so evaluations are spent there. A band that
    cannot fill its share with such children takes any unseen child under L; what
    is left still goes to the front. The state is the memo itself (parents are
    re-read from it), so resume needs nothing more than the journal.
    """
    Config = BandsConfig
    caches_costs = False  # many candidates are cost-checked; none is asked for again

    def check(self):
        super().check()
        c = self.cfg
        _positive(c, "init_size", "budget_per_iter", "parents", "candidates_per_child", "child_rounds",
                  "attempts_per_arch")
        _prob(c, "front_share", "band_width", "gene_share", "crossover_share", "arch_mutate_prob",
              "resolution_mutate_prob")
        if c.band_shares not in ("limit", "equal"):
            raise UserError(f"search.band_shares must be limit or equal, not {c.band_shares!r}")
        if c.gene_share + c.crossover_share > 1 + 1e-9:
            raise UserError("search.gene_share + search.crossover_share must be <= 1")

    def initialize(self):
        self.ev.score(self.sample_unique(min(self.cfg.init_size, self.cfg.budget)), 0, "init")

    def setup_measures(self):
        super().setup_measures()
        self.accept = [0.25] * len(self.limits)  # in-band rate of each band's candidates, running

    def state_dict(self):
        return dict(super().state_dict(), accept=self.accept)

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.accept = [float(x) for x in d["accept"]]

    def band_parents(self, limit: float) -> np.ndarray:
        acc, cost = self.acc(), self.cost()
        ok = np.flatnonzero(cost <= limit + FEASIBLE_EPS)
        if ok.size == 0:  # nothing under the limit yet: start from the cheapest archs
            return np.argsort(cost, kind="stable")[: self.cfg.parents]
        return ok[np.argsort(-acc[ok], kind="stable")][: self.cfg.parents]

    def _candidates(self, parents: list[Arch], n: int) -> list[Arch]:
        c, rng, mut = self.cfg, self.rng, self.mutator
        n_gene = int(round(c.gene_share * n))
        n_cross = int(round(c.crossover_share * n)) if len(parents) > 1 else 0
        n_unit = max(0, n - n_gene - n_cross)
        packed = mut.pack(parents)
        P = len(parents)
        out = mut.gene_mutate_rows(packed, rng.integers(0, P, size=n_gene), c.arch_mutate_prob,
                                   c.resolution_mutate_prob, rng)
        if n_cross:
            a = rng.integers(0, P, size=n_cross)
            b = (a + rng.integers(1, P, size=n_cross)) % P  # two different parents
            out += mut.crossover_rows(packed, a, b, rng)
        out += [mut.mutate(parents[int(i)], rng) for i in rng.integers(0, P, size=n_unit)]
        return out

    def band_children(self, limits: list[float], need: list[int]) -> list[list[Arch]]:
        """Per limit, up to need[k] unseen, distinct archs costing within its band (else
        anything under it). Candidates of all bands are cost-checked in one batch per round;
        each band draws as many as its recent in-band rate says it needs (at most
        candidates_per_child per child wanted)."""
        c = self.cfg
        parents = [[self.ev.archs[i] for i in self.band_parents(lim)] for lim in limits]
        picked: list[list[Arch]] = [[] for _ in limits]
        spare: list[list[Arch]] = [[] for _ in limits]
        taken: set[Arch] = set()
        for _ in range(c.child_rounds):
            short = [k for k in range(len(limits)) if len(picked[k]) < need[k]]
            if not short:
                break
            cands, owner, drawn = [], [], {}
            for k in short:
                missing = need[k] - len(picked[k])
                n = min(c.candidates_per_child * missing, int(np.ceil(1.25 * missing / max(self.accept[k], 0.02))))
                drawn[k] = n
                for a in self._candidates(parents[k], n):
                    if a not in taken and a not in self.ev:
                        taken.add(a)  # once per round and band: a duplicate is not checked twice
                        cands.append(a)
                        owner.append(k)
            costs = self.ev.cost(cands)
            hits = dict.fromkeys(short, 0)
            for a, k, v in zip(cands, owner, costs):
                lim = limits[k]
                if v > lim + FEASIBLE_EPS:
                    continue
                if v >= lim * (1 - c.band_width):
                    hits[k] += 1
                    if len(picked[k]) < need[k]:
                        picked[k].append(a)
                elif len(spare[k]) < need[k]:
                    spare[k].append(a)
            for k in short:
                self.accept[k] = 0.5 * self.accept[k] + 0.5 * hits[k] / max(1, drawn[k])
        return [picked[k] + spare[k][: max(0, need[k] - len(picked[k]))] for k in range(len(limits))]

    def step(self, it):
        c = self.cfg
        n = min(c.budget_per_iter, self.remaining)
        limits = sorted(self.limits)
        n_bands = n - int(round(c.front_share * n)) if limits else 0
        # a higher limit has more archs under it, and more to search
        w = np.asarray(limits, dtype=np.float64) if c.band_shares == "limit" else np.ones(len(limits))
        w = w / w.sum() if len(limits) and w.sum() > 0 else np.full(len(limits), 1.0 / max(1, len(limits)))
        share = np.floor(w * n_bands).astype(np.int64)
        share[np.argsort(-(w * n_bands - share), kind="stable")[: n_bands - int(share.sum())]] += 1
        kids, origins = [], []
        for lim, group in zip(limits, self.band_children(limits, [int(k) for k in share])):
            kids += group
            origins += [f"band_{lim:g}"] * len(group)
        rest = n - len(kids)
        if rest > 0:
            acc, cost = self.acc(), self.cost()
            front = [self.ev.archs[i] for i in front_order(acc, cost, non_dominated(acc, cost))]
            taken = set(kids)
            seen = lambda a: a in self.ev or a in taken  # noqa: E731
            group = mutate_archs(self.mutator, front, rest, self.rng, seen=seen, attempts_per_arch=c.attempts_per_arch)
            kids += group
            origins += ["front"] * len(group)
        self.ev.score(kids, it, origins)

    def selected(self):
        return np.unique(np.concatenate([self.band_parents(lim)[:1] for lim in self.limits]
                                        + [np.flatnonzero(non_dominated(self.acc(), self.cost()))]))


# ===================================================================== random
class RandomSearch(Strategy):
    Config = RandomConfig

    def check(self):
        super().check()
        _positive(self.cfg, "init_size", "budget_per_iter")

    def initialize(self):
        self.ev.score(self.sample_unique(min(self.cfg.init_size, self.cfg.budget)), 0, "init")

    def step(self, it):
        self.ev.score(self.sample_unique(min(self.cfg.budget_per_iter, self.remaining)), it, "sample")

