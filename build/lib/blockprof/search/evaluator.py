"""The search's memo: every arch scored once, in batches, with the budget counted in
unique archs.

`score(archs)` scores every configured metric on the archs never scored before, in
one batch per metric; duplicates (within the batch or with the memo) are free and
not counted. `cost(archs)` checks only the cost metric (constraint filtering, as the
seed and OFA do before spending an accuracy evaluation); such checks are counted
apart (`cost_checks`) and their values reused when the arch is scored later.

What was added since the last `take_frame()` is one checkpoint frame (JSON-able),
so a run can be rebuilt exactly from its journal.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blockprof.metrics.base import Metric
from blockprof.core.space import Arch


def arch_key(a: Arch) -> str:
    return f"{a.text}@{a.resolution}"


def arch_from_key(k: str) -> Arch:
    text, res = k.rsplit("@", 1)
    return Arch(tuple(tuple(u.split("->")) for u in text.split("|")), int(res))


class _Column:
    """A float64 array that grows by doubling."""

    def __init__(self, dtype=np.float64):
        self.data = np.empty(1024, dtype=dtype)
        self.n = 0

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=self.data.dtype)
        need = self.n + len(values)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n: need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]


class Evaluator:
    def __init__(self, metrics: dict[str, Metric], cost: str, cache_costs: bool = True):
        if cost not in metrics:
            raise ValueError(f"cost metric {cost} is not among {list(metrics)}")
        self.metrics, self.cost_name = dict(metrics), cost
        self.names = list(metrics)
        self.archs: list[Arch] = []
        self.index: dict[Arch, int] = {}
        self.columns = {n: _Column() for n in self.names}
        self.iteration = _Column(np.int64)
        self.origin: list[str] = []
        self.cost_cache: dict[Arch, float] = {}   # cost-only checks, in check order
        # False: cost checks are only counted (a strategy that checks many candidates and
        # never asks which were checked keeps no cache and journals none)
        self.cache_costs = cache_costs
        self.checks_uncached = 0
        self.queries = 0                          # archs asked for, duplicates included (OFA's count)
        self._frame_start = 0
        self._frame_costs: list[tuple[Arch, float]] = []

    # ------------------------------------------------------------ counts
    @property
    def evaluations(self) -> int:
        return len(self.archs)

    @property
    def cost_checks(self) -> int:
        return len(self.cost_cache) + self.checks_uncached

    def __contains__(self, arch: Arch) -> bool:
        return arch in self.index

    def values(self, name: str) -> np.ndarray:
        return self.columns[name].view

    # ------------------------------------------------------------ scoring
    def new_unique(self, archs: Sequence[Arch]) -> list[Arch]:
        """`archs` not yet scored, first occurrence only, order kept."""
        out, local = [], set()
        for a in archs:
            if a not in self.index and a not in local:
                local.add(a)
                out.append(a)
        return out

    def score(self, archs: Sequence[Arch], iteration: int, origin: str | Sequence[str],
              limit: int | None = None) -> np.ndarray:
        """Score the unseen archs (at most `limit` of them, in order); memo indices of all
        `archs` that are scored afterwards (unscored ones beyond the limit get -1).
        `origin`: one label for all, or one per arch."""
        if isinstance(origin, str):
            new = self.new_unique(archs)
            origins = [origin] * len(new)
        else:
            if len(origin) != len(archs):
                raise ValueError(f"{len(origin)} origins for {len(archs)} archs")
            new, origins, local = [], [], set()
            for a, o in zip(archs, origin):
                if a not in self.index and a not in local:
                    local.add(a)
                    new.append(a)
                    origins.append(o)
        if limit is not None:
            new, origins = new[: max(0, limit)], origins[: max(0, limit)]
        if new:
            vals = {}
            for name, m in self.metrics.items():
                if name == self.cost_name and all(a in self.cost_cache for a in new):
                    vals[name] = np.array([self.cost_cache[a] for a in new], dtype=np.float64)
                else:
                    vals[name] = np.asarray(m.evaluate(new), dtype=np.float64).reshape(-1)
            self._append(new, vals, [iteration] * len(new), origins)
        idx = np.array([self.index.get(a, -1) for a in archs], dtype=np.int64)
        self.queries += int((idx >= 0).sum())
        return idx

    def _append(self, archs, vals, iterations, origins) -> None:
        base = len(self.archs)
        for i, a in enumerate(archs):
            self.index[a] = base + i
        self.archs.extend(archs)
        for n in self.names:
            self.columns[n].extend(vals[n])
        self.iteration.extend(iterations)
        self.origin.extend(origins)

    def cost(self, archs: Sequence[Arch]) -> np.ndarray:
        """The cost metric of `archs` (memo, then cost cache, then one batch for the rest)."""
        out = np.empty(len(archs), dtype=np.float64)
        todo, pos = [], {}
        cost_col = self.columns[self.cost_name]
        for i, a in enumerate(archs):
            j = self.index.get(a)
            if j is not None:
                out[i] = cost_col.data[j]
            elif a in self.cost_cache:
                out[i] = self.cost_cache[a]
            elif a in pos:
                pos[a].append(i)
            else:
                pos[a] = [i]
                todo.append(a)
        if todo:
            vals = np.asarray(self.metrics[self.cost_name].evaluate(todo), dtype=np.float64).reshape(-1)
            if not self.cache_costs:
                self.checks_uncached += len(todo)
                for a, v in zip(todo, vals):
                    out[pos[a]] = v
                return out
            for a, v in zip(todo, vals):
                self.cost_cache[a] = float(v)
                self._frame_costs.append((a, float(v)))
                out[pos[a]] = v
        return out

    # ------------------------------------------------------------ checkpoint frames
    def take_frame(self) -> dict:
        """Everything added since the previous frame, as plain JSON-able data."""
        s = self._frame_start
        frame = {
            "archs": [arch_key(a) for a in self.archs[s:]],
            "values": {n: [float(v) for v in self.columns[n].view[s:]] for n in self.names},
            "iteration": [int(v) for v in self.iteration.view[s:]],
            "origin": self.origin[s:],
            "costs": [[arch_key(a), v] for a, v in self._frame_costs],
        }
        self._frame_start = len(self.archs)
        self._frame_costs = []
        return frame

    def apply_frame(self, frame: dict) -> None:
        archs = [arch_from_key(k) for k in frame["archs"]]
        missing = [n for n in self.names if n not in frame["values"]]
        if missing:
            raise ValueError(f"checkpoint frame lacks metric(s) {missing}")
        self._append(archs, frame["values"], frame["iteration"], frame["origin"])
        for k, v in frame["costs"]:
            self.cost_cache[arch_from_key(k)] = float(v)
        self._frame_start = len(self.archs)
        self._frame_costs = []
