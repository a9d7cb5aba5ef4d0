"""The shared timing protocol: drift normalisation, interleaving and the measured metric."""
from __future__ import annotations

import json

import numpy as np
import pytest

from blockprof.common.errors import UserError
from blockprof.core.registry import build_space
from blockprof.metrics.measured import MeasuredLatency
from blockprof.metrics.timing import ChunkTimer, Protocol, normalise_rounds, reference_archs, time_runs


class _Clocked:
    """An engine whose `run` costs a known amount of a fake clock, scaled by a drift that
    changes every round: the protocol must take the drift out."""
    name = "fake"

    def __init__(self):
        self.drift, self.calls = 1.0, []

    def prepare(self, arch):
        cost = float(arch.resolution)
        return lambda: cost

    def time_once(self, run):
        self.calls.append(run())
        return run() * self.drift

    def session(self):
        import contextlib
        return contextlib.nullcontext()


def test_normalise_rounds_removes_a_per_round_drift():
    true = np.array([10.0, 20.0, 40.0])
    drift = np.array([1.0, 1.5, 0.8, 2.0])
    raw = true[:, None] * drift[None, :]
    refs = np.array([5.0, 7.0])[:, None] * drift[None, :]
    vals, factor = normalise_rounds(raw, refs, [5.0, 7.0], "median")
    assert vals == pytest.approx(true)
    assert factor == pytest.approx(np.median(drift))
    # without references the drift stays in
    vals, factor = normalise_rounds(raw, np.zeros((0, 4)), [], "median")
    assert factor == 1.0 and not np.allclose(vals, true)


def test_time_runs_interleaves_every_run_once_per_round():
    eng = _Clocked()
    sp = build_space("mbv3", resolutions=[128, 160, 192])
    archs = reference_archs(sp, 3, 3)
    runs = [eng.prepare(a) for a in archs]
    proto = Protocol(warmup=0, rounds=4)
    t = time_runs(eng, runs, proto, np.random.default_rng(0))
    assert t.shape == (3, 4)
    assert t[:, 0] == pytest.approx([a.resolution for a in archs])
    # each round runs every subnet once, in a fresh order
    assert sorted(eng.calls[:3]) == sorted(eng.calls[3:6]) == sorted(a.resolution for a in archs)


def test_chunk_timer_keeps_one_scale_across_drifting_chunks():
    eng = _Clocked()
    sp = build_space("mbv3", resolutions=[128, 160, 192])
    refs = reference_archs(sp, 0, 2)
    timer = ChunkTimer(eng, Protocol(warmup=0, rounds=3, references=2), refs, rng=np.random.default_rng(1))
    timer.calibrate()
    archs = sp.sample(np.random.default_rng(2), 4)
    first, _ = timer(archs)
    eng.drift = 3.0  # the machine got 3x slower
    second, factor = timer(archs)
    assert factor == pytest.approx(3.0)
    assert second == pytest.approx(first)


def test_protocol_checks_are_one_line_user_errors():
    with pytest.raises(UserError, match="needs hw cpu and 1 thread"):
        Protocol(threads=2).check()
    with pytest.raises(UserError, match="stat must be min or median"):
        Protocol(stat="mean").check()
    assert Protocol(threads=2, clock="wall").check().threads == 2


def test_measured_metric_times_real_subnets_through_the_protocol(tmp_path):
    sp = build_space("mbv3", resolutions=[128, 160])
    m = MeasuredLatency(sp, warmup=0, repeats=2, chunk_size=3, references=1)
    assert m.proto.clock == "cpu" and m.slots_per_call == 3
    m.bind_run_dir(tmp_path)
    archs = sp.sample(np.random.default_rng(0), 4)
    v = m.evaluate(archs)
    assert v.shape == (4,) and (v > 0).all() and len(m.last_factors) == 2  # 4 archs in chunks of 3
    assert m.last_spread.shape == (4,)
    saved = json.loads((tmp_path / "timing_calibration.json").read_text())
    assert saved["engine"] == "torch" and len(saved["baseline_ms"]) == 1
    # a resumed run (new metric, same run folder) takes the saved calibration, not a new one
    again = MeasuredLatency(sp, warmup=0, repeats=2, chunk_size=3, references=1)
    again.bind_run_dir(tmp_path)
    assert again.timer.baseline == saved["baseline_ms"]
    # a 160 px subnet costs more than the same subnet at 128 px
    big = MeasuredLatency(sp, warmup=1, repeats=3, chunk_size=4, references=0)
    a = archs[0]
    lo, hi = big.evaluate([sp.parse(a.text, 128), sp.parse(a.text, 160)])
    assert hi > lo
