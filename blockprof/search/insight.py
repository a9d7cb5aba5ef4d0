"""Insight (reduced) search spaces: per unit, the candidates, the mutation probability
and the min/max number of layers.

Where a profile comes from (`search.insight`):

- `full`, and the paper's hardware profiles `npu`, `gpu`, `cpu`, `note10`, `max_acc`:
  project config in `conf/insight/<space>.yaml` (mbv3_w10 reads mbv3's: same blocks);
- `<name>_random`: `<name>`'s candidate count per unit, drawn uniformly from the full
  list once per run with the run's seeded generator (depths and probabilities kept);
- `from_profile`: derived from a block-profiling run (`search.profile_run`: its folder,
  its `summary.csv`, or its MLflow run id) by the rule in `derive_from_summary`;
- a path to a YAML file in the schema (what every search run writes as `insight_space.yaml`).

Schema (one list entry per unit): `unit_candidates` (MBConv block names) or
`unit_width_indices` (ResNet width indices), `unit_mutate_probs`, `max_layers`, `min_layers`.
"""
from __future__ import annotations

import importlib.resources
import logging

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from blockprof.common.errors import UserError
from blockprof.core.space import DesignSpace, FamilyOps
from blockprof.search.pareto import non_dominated

INSIGHT_DIR = Path(str(importlib.resources.files("blockprof.conf") / "insight"))
META_KEYS = {"space", "profile", "source", "rule", "evidence"}
SCHEMA_KEYS = {"unit_candidates", "unit_width_indices", "unit_mutate_probs", "max_layers", "min_layers"}
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InsightProfile:
    space: str
    name: str
    candidates: tuple[tuple, ...]
    mutate_probs: tuple[float, ...]
    min_layers: tuple[int, ...]
    max_layers: tuple[int, ...]
    notes: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_units(self) -> int:
        return len(self.candidates)

    def to_dict(self, ops: FamilyOps) -> dict:
        d: dict[str, Any] = {"space": self.space, "profile": self.name}
        d.update({k: v for k, v in self.notes.items() if k in ("source", "rule")})
        d[ops.candidates_key] = [list(c) for c in self.candidates]
        d["unit_mutate_probs"] = [float(p) for p in self.mutate_probs]
        d["max_layers"] = [int(x) for x in self.max_layers]
        d["min_layers"] = [int(x) for x in self.min_layers]
        if "evidence" in self.notes:
            d["evidence"] = self.notes["evidence"]
        return d

    def to_yaml(self, ops: FamilyOps) -> str:
        return yaml.safe_dump(self.to_dict(ops), sort_keys=False, default_flow_style=None, width=200)


# ------------------------------------------------------------------ validation
def profile_from_dict(space: DesignSpace, name: str, d: dict, ops: FamilyOps | None = None,
                      notes: dict | None = None) -> InsightProfile:
    """Check a profile in the schema against the space; one clear line per problem."""
    ops = ops or space.ops
    where = f"insight profile '{name}' for space {space.name}"
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a mapping with {ops.candidates_key}, unit_mutate_probs, max_layers, min_layers")
    unknown = sorted(k for k in d if k not in SCHEMA_KEYS | META_KEYS and not str(k).startswith("_"))
    wrong_key = "unit_width_indices" if ops.candidates_key == "unit_candidates" else "unit_candidates"
    if wrong_key in d:
        raise UserError(f"{where}: uses '{wrong_key}', this space's profiles list '{ops.candidates_key}'")
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown} (schema: {ops.candidates_key}, unit_mutate_probs, max_layers, min_layers)")
    if d.get("space") not in (None, *space.insight_names):
        raise UserError(f"{where}: the profile is for space '{d['space']}'")
    missing = [k for k in (ops.candidates_key, "unit_mutate_probs", "max_layers", "min_layers") if d.get(k) is None]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    U = space.n_units
    for key in (ops.candidates_key, "unit_mutate_probs", "max_layers", "min_layers"):
        val = d[key]
        if not isinstance(val, (list, tuple)):
            raise UserError(f"{where}: {key} must be a list with one entry per unit")
        if len(val) != U:
            raise UserError(f"{where}: {key} has {len(val)} units, the space has {U}")
    cands = []
    for u, cs in enumerate(d[ops.candidates_key]):
        if not isinstance(cs, (list, tuple)) or not cs:
            raise UserError(f"{where}: unit {u} has no candidates (need a non-empty list)")
        universe = ops.universe(u)
        parsed = []
        for c in cs:
            try:
                c = ops.parse_candidate(c)
            except ValueError as exc:
                raise UserError(f"{where}: unit {u}: {exc}") from None
            if c not in universe:
                raise UserError(f"{where}: unit {u} lists unknown {ops.candidate_word} '{c}' "
                                f"(choose from {', '.join(map(str, universe))})")
            if c in parsed:
                raise UserError(f"{where}: unit {u} lists {ops.candidate_word} '{c}' twice")
            parsed.append(c)
        cands.append(tuple(sorted(parsed, key=universe.index)))
    probs, lo, hi = [], [], []
    for u in range(U):
        p, a, b = d["unit_mutate_probs"][u], d["min_layers"][u], d["max_layers"][u]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise UserError(f"{where}: unit {u} mutation probability {p!r} is not a number in [0, 1]")
        for key, v in (("min_layers", a), ("max_layers", b)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"{where}: unit {u} {key} {v!r} is not an integer")
        if a > b:
            raise UserError(f"{where}: unit {u} has min_layers {a} > max_layers {b}")
        if a < space.min_layers[u] or b > space.max_layers[u]:
            raise UserError(f"{where}: unit {u} allows {a}..{b} layers, the space allows "
                            f"{space.min_layers[u]}..{space.max_layers[u]}")
        probs.append(float(p))
        lo.append(int(a))
        hi.append(int(b))
    if not any(p > 0 for p in probs):
        raise UserError(f"{where}: every unit mutation probability is 0 (nothing could mutate)")
    return InsightProfile(space.name, name, tuple(cands), tuple(probs), tuple(lo), tuple(hi), dict(notes or {}))


# ------------------------------------------------------------------ named profiles
def insight_file(space: DesignSpace) -> Path:
    # the first of the space's insight names with a file (spaces sharing tokens share one)
    paths = [INSIGHT_DIR / f"{n}.yaml" for n in space.insight_names]
    return next((p for p in paths if p.is_file()), paths[0])


def named_profiles(space: DesignSpace) -> dict[str, dict]:
    path = insight_file(space)
    if not path.is_file():
        raise UserError(f"no insight profiles for space {space.name} (expected {path})")
    data = yaml.safe_load(path.read_text()) or {}
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or "full" not in profiles:
        raise UserError(f"{path}: expected a 'profiles' mapping with at least 'full'")
    return profiles


def choices(space: DesignSpace) -> list[str]:
    names = list(named_profiles(space))
    return names + [f"{n}_random" for n in names if n != "full"] + ["from_profile", "<path/to/profile.yaml>"]


def named_profile(space: DesignSpace, name: str, ops: FamilyOps | None = None) -> InsightProfile:
    profiles = named_profiles(space)
    if name not in profiles:
        raise UserError(f"unknown search.insight '{name}' for space {space.name} (choose from {', '.join(choices(space))})")
    return profile_from_dict(space, name, profiles[name], ops, notes={"source": str(insight_file(space).name)})


def random_variant(space: DesignSpace, base: InsightProfile, rng: np.random.Generator,
                   ops: FamilyOps | None = None) -> InsightProfile:
    """Same candidate count per unit as `base`, candidates drawn uniformly from the full list."""
    ops = ops or space.ops
    cands = []
    for u, cs in enumerate(base.candidates):
        universe = ops.universe(u)
        pick = np.sort(rng.choice(len(universe), size=len(cs), replace=False))
        cands.append(tuple(universe[int(i)] for i in pick))
    return InsightProfile(space.name, f"{base.name}_random", tuple(cands), base.mutate_probs, base.min_layers,
                          base.max_layers, {"source": f"random draw with {base.name}'s candidate counts"})


def load_profile_file(space: DesignSpace, path: Path, ops: FamilyOps | None = None) -> InsightProfile:
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"insight profile file {path} is not a text (YAML) file") from None
    except yaml.YAMLError as exc:
        raise UserError(f"insight profile file {path} is not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    name = str(data.get("profile", path.stem)) if isinstance(data, dict) else path.stem
    return profile_from_dict(space, name, data, ops, notes={"source": str(path)})


@dataclass
class FromProfileRule:
    """Knobs of the automatic reduction (search.from_profile)."""
    min_candidates: int = 2     # never keep fewer candidates per unit (best accuracy first)
    depth_ratio: float = 0.5    # drop a unit's deepest layer when it buys < ratio x the median accuracy per cost
    prob_min: float = 0.25      # mutation probability of the least sensitive unit
    prob_max: float = 0.5       # ... and of the most sensitive one


def load_insight(space: DesignSpace, name: str, rng: np.random.Generator, *, profile_run: str | None = None,
                 rule: FromProfileRule | None = None, cost: str = "latency",
                 fetch_run_summary: Callable[[str], tuple[pd.DataFrame, str]] | None = None) -> InsightProfile:
    """The profile `search.insight` names (see the module docstring). `fetch_run_summary`
    reads a profile run's summary.csv from MLflow, given its run id (the app passes one
    bound to this run's tracking store)."""
    ops = space.ops
    name = str(name)
    if name == "from_profile":
        if not profile_run:
            raise UserError("search.insight=from_profile needs search.profile_run "
                            "(a profile run folder, its summary.csv, or its MLflow run id)")
        df, source = read_profile_summary(str(profile_run), fetch_run_summary)
        return derive_from_summary(space, df, cost=cost, rule=rule or FromProfileRule(), source=source, ops=ops)
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"insight profile file {path} does not exist")
        return load_profile_file(space, path, ops)
    if name.endswith("_random") and name[:-7] in named_profiles(space):
        return random_variant(space, named_profile(space, name[:-7], ops), rng, ops)
    return named_profile(space, name, ops)


# ------------------------------------------------------------------ from a profile run
def read_profile_summary(source: str, fetch_run_summary=None) -> tuple[pd.DataFrame, str]:
    """`summary.csv` of a profile run: its folder, the file itself, or an MLflow run id."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "summary.csv"
        if not path.is_file():
            raise UserError(f"profile run folder {path.parent} has no summary.csv (is it a task=profile run?)")
    if path.is_file():
        return _read_csv(path), str(path)
    if _RUN_ID.match(source):
        if fetch_run_summary is None:
            raise UserError(f"search.profile_run '{source}' looks like an MLflow run id, but this run has no tracking store")
        df, where = fetch_run_summary(source)
        return _check_frame(df, where), where
    raise UserError(f"search.profile_run '{source}' is neither a profile run folder, a summary.csv, nor an MLflow run id")


def _check_frame(df, where: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise UserError(f"cannot read profile summary {where}")
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except Exception as exc:  # malformed file: the user's to fix
        raise UserError(f"cannot read profile summary {path}: {' '.join(str(exc).split())[:200]}") from None


def _int(v, what: str, source: str, row: int) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or f != int(f):
        raise UserError(f"profile summary {source} row {row + 2}: {what} {v!r} is not an integer")
    return int(f)


def derive_from_summary(space: DesignSpace, df: pd.DataFrame, *, cost: str, rule: FromProfileRule,
                        source: str, ops: FamilyOps | None = None) -> InsightProfile:
    """Reduce the full space with a block-profiling summary (one row per slot, plus the
    `random` baseline row). The rule, per unit u (rows at a fixed resolution are used
    only when the summary has no free-resolution rows):

    1. candidates: A[u, c], C[u, c] = mean over u's layers of the slot means of accuracy
       and of the cost metric for candidate c (MBConv: the block; ResNet: the width
       index). Keep the candidates no other candidate of u beats on both (Pareto
       non-dominated in mean accuracy vs mean cost); if fewer than
       `min_candidates` survive, add back the most accurate dominated ones. A unit
       with fewer than `min_candidates` profiled candidates keeps its full list.
    2. depth: the deepest layer L of a unit that may vary in depth is forced only in
       archs where the unit is at full depth. Its price is (mean accuracy - baseline
       accuracy) / (mean cost - baseline cost) over L's rows. A unit whose price is
       below `depth_ratio` x the median over units loses that layer (max_layers - 1).
    3. mutation probability: prob_min + (prob_max - prob_min) x the unit's accuracy
       spread over its candidates (max - min of A[u, .]), scaled to the units' range.

    Units the summary says nothing about keep the full space's settings.
    """
    ops = ops or space.ops
    acc_col, cost_col = "accuracy_mean", f"{cost}_mean"
    need = ["unit", "layer", "block", acc_col, cost_col] + (["width"] if ops.candidates_key == "unit_width_indices" else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(f"profile summary {source} lacks column(s) {', '.join(missing)} "
                        f"(from_profile needs a profile run scored on accuracy and {cost})")
    if rule.min_candidates < 1 or not 0 <= rule.prob_min <= rule.prob_max <= 1 or rule.depth_ratio < 0:
        raise UserError("search.from_profile needs min_candidates >= 1, 0 <= prob_min <= prob_max <= 1, depth_ratio >= 0")
    blocks = df["block"].astype(str)
    base = df[blocks == "random"]
    rows = df[blocks != "random"]
    if "resolution" in rows.columns:
        free = rows["resolution"].isna() | (rows["resolution"].astype(str).str.strip() == "")
        if free.any():
            rows = rows[free]
    full = named_profile(space, "full", ops)
    U = space.n_units
    acc = {u: {} for u in range(U)}    # candidate -> list of slot means
    cst = {u: {} for u in range(U)}
    deepest = {u: ([], []) for u in range(U)}
    for i, r in zip(rows.index, rows.to_dict("records")):
        u, l = _int(r["unit"], "unit", source, i), _int(r["layer"], "layer", source, i)
        if not 0 <= u < U:
            raise UserError(f"profile summary {source} row {i + 2}: unit {u} is outside the space's 0..{U - 1}")
        a, c = float(r[acc_col]), float(r[cost_col])
        if not (math.isfinite(a) and math.isfinite(c)):
            continue
        cand = ops.candidate_of_row(r)
        if cand is not None:
            acc[u].setdefault(cand, []).append(a)
            cst[u].setdefault(cand, []).append(c)
        if l == full.max_layers[u] - 1 and full.min_layers[u] < full.max_layers[u]:
            deepest[u][0].append(a)
            deepest[u][1].append(c)
    if not any(acc[u] for u in range(U)):
        raise UserError(f"profile summary {source} has no slot rows this space's candidates can use")

    cands, probs, max_layers = list(full.candidates), list(full.mutate_probs), list(full.max_layers)
    evidence: dict[str, Any] = {"candidates": {}, "depth": {}, "sensitivity": {}}
    spread = {}
    for u in range(U):
        if not acc[u]:
            continue
        universe = ops.universe(u)
        keys = sorted(acc[u], key=universe.index)
        A = np.array([np.mean(acc[u][k]) for k in keys])
        C = np.array([np.mean(cst[u][k]) for k in keys])
        if len(keys) < rule.min_candidates:  # too little evidence to cut: keep the full list
            evidence["candidates"][f"unit_{u}"] = {"kept_full_list": f"only {len(keys)} profiled "
                                                   f"{ops.candidate_word}(s) < min_candidates {rule.min_candidates}"}
            log.warning("from_profile: unit %d has only %d profiled %s(s) (< min_candidates %d): "
                        "keeping its full candidate list", u, len(keys), ops.candidate_word, rule.min_candidates)
            continue
        keep = non_dominated(A, C)
        for j in np.argsort(-A, kind="stable"):
            if keep.sum() >= rule.min_candidates:
                break
            keep[j] = True
        cands[u] = tuple(k for k, m in zip(keys, keep) if m)
        spread[u] = float(A.max() - A.min())
        evidence["candidates"][f"unit_{u}"] = {str(k): {"accuracy": round(float(a), 4), cost: round(float(c), 4), "kept": bool(m)}
                                               for k, a, c, m in zip(keys, A, C, keep)}
    # depth
    if len(base):
        b_acc, b_cost = float(base[acc_col].iloc[0]), float(base[cost_col].iloc[0])
        price = {}
        for u in range(U):
            a_list, c_list = deepest[u]
            if not a_list:
                continue
            gain, extra = float(np.mean(a_list)) - b_acc, float(np.mean(c_list)) - b_cost
            price[u] = gain / extra if extra > 0 else math.inf
            evidence["depth"][f"unit_{u}"] = {"layer": full.max_layers[u] - 1, "accuracy_gain": round(gain, 4),
                                              f"{cost}_extra": round(extra, 4),
                                              "price": round(price[u], 6) if math.isfinite(price[u]) else "inf"}
        finite = [p for p in price.values() if math.isfinite(p)]
        if finite:
            median = float(np.median(finite))
            for u, p in price.items():
                drop = median > 0 and p < rule.depth_ratio * median and max_layers[u] > full.min_layers[u]
                if drop:
                    max_layers[u] -= 1
                evidence["depth"][f"unit_{u}"]["dropped"] = bool(drop)
            evidence["depth"]["median_price"] = round(median, 6)
    else:
        evidence["depth"]["note"] = "no 'random' baseline row: depths kept"
    # mutation probabilities from sensitivity
    if spread:
        lo_s, hi_s = min(spread.values()), max(spread.values())
        for u, s in spread.items():
            frac = (s - lo_s) / (hi_s - lo_s) if hi_s > lo_s else 1.0
            probs[u] = round(rule.prob_min + (rule.prob_max - rule.prob_min) * frac, 4)
            evidence["sensitivity"][f"unit_{u}"] = round(s, 4)
    rule_d = {"min_candidates": rule.min_candidates, "depth_ratio": rule.depth_ratio,
              "prob_min": rule.prob_min, "prob_max": rule.prob_max, "cost": cost}
    d = {ops.candidates_key: [list(c) for c in cands], "unit_mutate_probs": probs,
         "max_layers": max_layers, "min_layers": list(full.min_layers)}
    return profile_from_dict(space, "from_profile", d, ops,
                             notes={"source": source, "rule": rule_d, "evidence": evidence})


def profile_fits(space: DesignSpace, profile: InsightProfile, arch, ops: FamilyOps | None = None,
                 resolutions: Sequence[int] | None = None) -> bool:
    """Whether `arch` lies inside the profile (candidates, depths, resolutions)."""
    ops = ops or space.ops
    if resolutions is not None and arch.resolution not in resolutions:
        return False
    for u, layers in enumerate(arch.units):
        if not profile.min_layers[u] <= len(layers) <= profile.max_layers[u]:
            return False
        if not ops.unit_fits(profile.candidates[u], u, layers):
            return False
    return True
