"""Two-objective Pareto measures: accuracy (maximise) against a cost (minimise).

Everything takes plain arrays (one entry per arch), so the search can ask for
the front of tens of thousands of scored archs every iteration.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _arrays(acc, cost) -> tuple[np.ndarray, np.ndarray]:
    acc, cost = np.asarray(acc, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    if acc.shape != cost.shape or acc.ndim != 1:
        raise ValueError(f"accuracy and cost must be 1-D arrays of one shape, got {acc.shape} and {cost.shape}")
    return acc, cost


def non_dominated(acc, cost) -> np.ndarray:
    """Mask of the points no other point dominates (O(n log n)).

    q dominates p when acc_q >= acc_p and cost_q <= cost_p with one of them strict.
    Identical points do not dominate each other: both stay. NaNs are never on the front.
    """
    acc, cost = _arrays(acc, cost)
    n = len(acc)
    mask = np.zeros(n, dtype=bool)
    ok = np.flatnonzero(~(np.isnan(acc) | np.isnan(cost)))
    if ok.size == 0:
        return mask
    a_all, c_all = acc[ok], cost[ok]
    order = np.lexsort((-a_all, c_all))  # cost ascending, accuracy descending among equal costs
    a, c = a_all[order], c_all[order]
    new_group = np.r_[True, c[1:] != c[:-1]]
    starts = np.flatnonzero(new_group)
    group = np.cumsum(new_group) - 1
    running = np.maximum.accumulate(a)
    best_cheaper = np.full(len(starts), -np.inf)  # best accuracy at strictly lower cost
    best_cheaper[1:] = running[starts[1:] - 1]
    group_best = a[starts]
    keep = (a == group_best[group]) & (a > best_cheaper[group])
    mask[ok[order[keep]]] = True
    return mask


def pareto_layers(acc, cost, runs: int = 1) -> np.ndarray:
    """Mask of the points in the first `runs` non-dominated layers (the seed's "pareto runs")."""
    acc, cost = _arrays(acc, cost)
    if runs < 1:
        raise ValueError("runs must be >= 1")
    chosen = np.zeros(len(acc), dtype=bool)
    left = np.flatnonzero(~(np.isnan(acc) | np.isnan(cost)))
    for _ in range(runs):
        if left.size == 0:
            break
        m = non_dominated(acc[left], cost[left])
        chosen[left[m]] = True
        left = left[~m]
    return chosen


def hypervolume(acc, cost, ref_acc: float, ref_cost: float) -> float:
    """Area dominated by the points inside the box acc > ref_acc, cost < ref_cost.

    Accuracy is maximised and cost minimised; the reference point is the worst
    corner (lowest accuracy, highest cost) that still counts.
    """
    acc, cost = _arrays(acc, cost)
    inside = (acc > ref_acc) & (cost < ref_cost)
    if not inside.any():
        return 0.0
    a, c = acc[inside], cost[inside]
    nd = non_dominated(a, c)
    a, c = a[nd], c[nd]
    order = np.argsort(-a, kind="stable")  # accuracy descending: cost descending too
    a, c = a[order], c[order]
    lower = np.r_[a[1:], ref_acc]
    return float(np.sum((ref_cost - c) * (a - lower)))


def best_under(acc, cost, limits: Sequence[float]) -> np.ndarray:
    """Best accuracy among points with cost <= each limit (NaN where none)."""
    acc, cost = _arrays(acc, cost)
    out = np.full(len(limits), np.nan)
    valid = ~(np.isnan(acc) | np.isnan(cost))
    for i, lim in enumerate(limits):
        m = valid & (cost <= lim)
        if m.any():
            out[i] = acc[m].max()
    return out


def front_order(acc, cost, mask: np.ndarray) -> np.ndarray:
    """Indices of `mask`'s points sorted by cost, then accuracy descending."""
    acc, cost = _arrays(acc, cost)
    idx = np.flatnonzero(mask)
    return idx[np.lexsort((-acc[idx], cost[idx]))]
