"""Choosing which archs to measure: coverage of the cost space, seeded, bounded."""
from __future__ import annotations

import numpy as np
import pytest

from blockprof.core.registry import build_space
from blockprof.metrics.analytic import mmacs_metric
from blockprof.predictors.selection import choose, cost_embedding


def test_chosen_archs_cover_the_space_better_than_random():
    space = build_space("mbv3")
    pool = space.sample(np.random.default_rng(0), 600)
    macs = mmacs_metric(space).evaluate(pool)
    emb = cost_embedding(space, pool)
    assert emb.shape == (600, space.n_slot_positions + 1) and np.isfinite(emb).all()
    chosen = choose(space, pool, 40, seed=0)
    assert len(set(chosen.tolist())) == 40 and np.array_equal(chosen, choose(space, pool, 40, seed=0))
    spans = [np.ptp(macs[choose(space, pool, 40, seed=s, strategy="random")]) for s in range(5)]
    assert np.ptp(macs[chosen]) > max(spans)  # reaches both ends of the MACs range
    # few-shot: the transferred predictor's estimate is spread over too
    pred = macs * 0.1 + 3
    picked = choose(space, pool, 40, seed=0, predicted_ms=pred)
    assert np.ptp(pred[picked]) == pytest.approx(np.ptp(pred), rel=0.05)
    assert np.array_equal(choose(space, pool[:10], 40), np.arange(10))
    with pytest.raises(ValueError, match="unknown selection strategy"):
        choose(space, pool, 5, strategy="greedy")
