"""Which archs to measure: a calibration set that covers the space, not only a random one.

A latency predictor learns what each block costs at each position and resolution; archs
drawn at random repeat the common cases (mid-size blocks, mid depths) and leave the corners
(all-large, all-small, the deepest units at the largest resolution) to extrapolation. The
chooser spreads k archs over a candidate pool by greedy farthest-point (k-centre) selection
in a cost-shaped embedding: per slot position the MACs of the block there (0 for an
inactive layer) and the MACs of the fixed stem/head, log-scaled and standardised, so two
archs are far apart when their costs sit in different places.

Few-shot (a predictor transferred from another device is at hand): its predicted
log-latency is one more coordinate with the weight of all the others together, so the
chosen set also spans the predicted latency range evenly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blockprof.core.space import Arch, DesignSpace

STRATEGIES = ("random", "coverage")


def _macs(layer) -> float:
    from blockprof.core.layers import layer_macs
    return float(layer_macs(layer))


def cost_embedding(space: DesignSpace, archs: Sequence[Arch]) -> np.ndarray:
    """[n, slots + 1]: log1p of the MMACs per slot position, and of the fixed part."""
    fixed_macs, slot_macs = space.cost_tables(lambda layer, r: _macs(layer))
    enc = space.encode(list(archs))
    res = enc.res.astype(np.intp)
    active = enc.choice >= 0
    idx = np.where(active, enc.choice, 0).astype(np.intp)
    S = enc.choice.shape[1]
    per_slot = np.where(active, slot_macs[res[:, None], np.arange(S)[None, :], idx], 0.0) * 1e-6
    fixed = fixed_macs[res, enc.fixed.astype(np.intp)] * 1e-6
    return np.log1p(np.concatenate([per_slot, fixed[:, None]], axis=1))


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def choose(space: DesignSpace, pool: Sequence[Arch], k: int, seed: int = 0, strategy: str = "coverage",
           predicted_ms: np.ndarray | None = None) -> np.ndarray:
    """Indices (sorted) of k archs of `pool` to measure. `predicted_ms`: a transferred
    predictor's estimates for the pool (few-shot), spread over evenly too."""
    n = len(pool)
    if k >= n:
        return np.arange(n)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r} (choose from {list(STRATEGIES)})")
    rng = np.random.default_rng([seed, 31])
    if strategy == "random":
        return np.sort(rng.choice(n, size=k, replace=False))
    x = _standardise(cost_embedding(space, pool))
    if predicted_ms is not None:
        p = np.log(np.asarray(predicted_ms, dtype=np.float64))
        # one coordinate as heavy as all the others together (their variances add up to d)
        x = np.concatenate([x, (_standardise(p[:, None])) * np.sqrt(x.shape[1])], axis=1)
    # start at the arch nearest the centre; then always add the one farthest from the chosen
    first = int(np.argmin(np.sum(x ** 2, axis=1)))
    chosen = [first]
    d = np.sum((x - x[first]) ** 2, axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(d + rng.random(n) * 1e-9))  # tiny jitter: seeded tie-break
        chosen.append(nxt)
        d = np.minimum(d, np.sum((x - x[nxt]) ** 2, axis=1))
    return np.sort(np.array(chosen))
