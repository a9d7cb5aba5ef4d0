"""One timing protocol for every measured latency (task=measure and the measured metric).

Shared machines drift: other jobs keep the cores busy for minutes at a time, so
wall-clock latency of one subnet drifted 3x over a 40-minute run, and a
co-runner on the other core slows even our own CPU time by up to ~30 %.
The protocol, chosen by measuring:

* **Fixed, small thread count** (`threads`, 1 by default): with 2 threads on a
  loaded 2-core machine every op waits for its slowest thread (3.5x slower, 3x noisier).
* **CPU clock** (`clock: cpu`, needs 1 thread and an engine that runs on the
  host CPU): time the forward pass with the CPU time of the thread or process
  that does the work, which equals wall time on an idle machine but leaves out
  the time the scheduler gives to other jobs. `clock: wall` for GPUs (CUDA
  events) or to reproduce plain wall-clock timing.
* **Interleaved rounds**: `chunk_size` subnets are prepared and warmed up, then
  timed in `rounds` rounds, each round running every subnet of the chunk once in
  a fresh random order, so an arch's runs are spread over the chunk's time.
* **Reference subnets** (`references`, seeded, at the smallest, middle and
  largest resolution) run in every round like the archs. Each round's timings
  are divided by that round's drift factor, the geometric mean over the
  references of (their time in this round / their baseline). The baselines are
  timed once (calibration, 3x the rounds); a caller that must stay on one
  scale across sessions keeps them (task=measure writes them to its meta.json).
* **Median over the rounds** (`stat`): with the CPU clock steadier than the min.
* **Elsewhere**: a board over SSH runs a whole chunk's rounds itself (the engine's
  `time_chunk`, orders drawn here), and a vendor's timing tool reports its own
  number per call (`clock: tool`, one call per timing); normalisation stays here.

What it bought for PyTorch eager, OFA-MBv3, 2,000 archs then 100 re-timed in a
separate pass (2 busy cores, load average 4, up to 10):

    protocol                                           test-retest MAPE  within +-10 %
    wall clock, interleaved, min of 6                         82 %             11 %
    CPU clock, median of 6, references per chunk             7.5 %             73 %
    CPU clock, median of 6, references per round             5.4 %             86 %

Engines (PyTorch eager, ONNX Runtime, OpenVINO, CUDA) live in
blockprof.metrics.engines; this module only needs `engine.prepare(arch)` and
`engine.time_once(run)`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, DesignSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    hw: str = "cpu"
    threads: int = 1
    warmup: int = 1
    rounds: int = 6
    chunk_size: int = 25
    stat: str = "median"
    clock: str = "cpu"
    references: int = 3
    normalise: str = "round"   # drift factor per round (the only reduction; recorded so old CSVs are told apart)
    batch_size: int = 1

    def check(self, who: str = "measure") -> "Protocol":
        if self.hw not in ("cpu", "cuda") and self.clock != "tool":  # a vendor tool runs where it runs
            raise UserError(f"{who}: device.latency.hw must be cpu or cuda, not '{self.hw}'")
        if self.stat not in ("min", "median"):
            raise UserError(f"{who}: stat must be min or median, not '{self.stat}'")
        if self.clock not in ("cpu", "wall", "tool"):
            raise UserError(f"{who}: clock must be cpu or wall, not '{self.clock}'")
        if self.clock == "cpu" and (self.hw != "cpu" or self.threads != 1):
            raise UserError(f"{who}: clock=cpu (CPU time) needs hw cpu and 1 thread; "
                            "use clock=wall for CUDA or several threads")
        if self.references < 0:
            raise UserError(f"{who}: references must be >= 0, not {self.references}")
        for k in ("threads", "rounds", "chunk_size", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise UserError(f"{who}: {k} must be >= 1, not {getattr(self, k)}")
        if self.warmup < 0:
            raise UserError(f"{who}: warmup must be >= 0, not {self.warmup}")
        return self

    def same_data(self, other: dict) -> bool:
        """Rows measured under `other` mix with ours (chunking is only scheduling)."""
        mine = asdict(self)
        return all(other.get(k) == mine[k] for k in ("hw", "threads", "warmup", "rounds", "stat", "clock",
                                                     "references", "normalise", "batch_size"))


def reference_archs(space: DesignSpace, base_seed: int, k: int) -> list[Arch]:
    """k seeded reference archs at the smallest, middle and largest resolutions (cycled)."""
    rs = sorted(space.resolutions)
    picks = [rs[0], rs[len(rs) // 2], rs[-1]]
    return [space.sample(np.random.default_rng([base_seed, 4, j]), 1, resolution=picks[j % 3])[0]
            for j in range(k)]


def time_runs(engine, runs: Sequence[Callable[[], object]], proto: Protocol, rng: np.random.Generator,
              rounds: int | None = None) -> np.ndarray:
    """Raw timings [len(runs), rounds] (ms) of prepared runs, in interleaved rounds.

    An engine that runs elsewhere (a board over SSH) provides `time_chunk(runs, warmup,
    orders)` and times the whole chunk there in one go - the same warmup and the same
    round orders, drawn here from the same generator - so no network round trip ever
    sits inside a timing."""
    rounds = rounds or proto.rounds
    time_chunk = getattr(engine, "time_chunk", None)
    if time_chunk is not None:
        orders = [rng.permutation(len(runs)) for _ in range(rounds)]
        times = np.asarray(time_chunk(runs, proto.warmup, orders), dtype=np.float64)
        if times.shape != (len(runs), rounds):
            raise ValueError(f"{type(engine).__name__}.time_chunk returned shape {times.shape}, "
                             f"expected {(len(runs), rounds)}")
        return times
    times = np.empty((len(runs), rounds))
    for run in runs:
        for _ in range(proto.warmup):
            run()
    for r in range(rounds):
        for i in rng.permutation(len(runs)):
            times[i, r] = engine.time_once(runs[i])
    return times


def reduce_times(times: np.ndarray, stat: str) -> np.ndarray:
    return times.min(axis=1) if stat == "min" else np.median(times, axis=1)


def normalise_rounds(raw: np.ndarray, ref_raw: np.ndarray, baseline, stat: str) -> tuple[np.ndarray, float]:
    """Per-arch values of one chunk: each round's timings divided by that round's drift
    factor (geometric mean over the references of timing / baseline), then `stat` over
    the rounds. Returns the values and the chunk's median drift factor."""
    if len(ref_raw) == 0:
        return reduce_times(raw, stat), 1.0
    per_round = np.exp(np.mean(np.log(ref_raw / np.asarray(baseline, dtype=np.float64)[:, None]), axis=0))
    return reduce_times(raw / per_round[None, :], stat), float(np.median(per_round))


class ChunkTimer:
    """Times chunks of archs through `engine` with the reference subnets interleaved in
    every round, and rescales each round by its drift factor. The references are
    prepared once and reused; `baseline` (ms per reference) is calibrated on first
    use unless given. `log(ids, archs, raw, what)` receives the raw rounds."""

    def __init__(self, engine, proto: Protocol, refs: Sequence[Arch], baseline: Sequence[float] | None = None,
                 rng: np.random.Generator | None = None, log: Callable | None = None):
        self.engine, self.proto, self.refs, self.log = engine, proto, list(refs), log
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.baseline = list(baseline) if baseline is not None else None
        self.calibration_ms = None
        self._ref_runs = None

    def ref_runs(self) -> list:
        if self._ref_runs is None:
            self._ref_runs = [self.engine.prepare(a) for a in self.refs]
        return self._ref_runs

    def calibrate(self) -> list[float]:
        """Baselines of the references: the references alone, 3x the rounds."""
        if self.baseline is None and self.refs:
            with self.engine.session():
                raw = time_runs(self.engine, self.ref_runs(), self.proto, self.rng, rounds=3 * self.proto.rounds)
            self.baseline = [float(v) for v in reduce_times(raw, self.proto.stat)]
            self.calibration_ms = [[round(float(x), 4) for x in row] for row in raw]
            logger.info("timing: calibrated %d reference subnets: %s ms", len(self.refs),
                        ", ".join(f"{b:.2f}" for b in self.baseline))
        return self.baseline or []

    def __call__(self, archs: Sequence[Arch], ids=None, what: str = "measure") -> tuple[np.ndarray, float]:
        self.calibrate()
        archs = list(archs)
        with self.engine.session():
            runs = [self.engine.prepare(a) for a in archs]
            raw = time_runs(self.engine, runs + self.ref_runs(), self.proto, self.rng)
        del runs
        if self.log is not None:
            ids = list(range(len(archs))) if ids is None else list(ids)
            self.log(ids + list(-1 - np.arange(len(self.refs))), archs + self.refs, raw, what)
        return normalise_rounds(raw[:len(archs)], raw[len(archs):], self.baseline, self.proto.stat)

    def time_all(self, archs: Sequence[Arch], ids=None, what: str = "measure",
                 on_chunk: Callable | None = None) -> np.ndarray:
        """Every arch, `chunk_size` at a time. `on_chunk(ids, values, factor)` after each chunk."""
        archs = list(archs)
        ids = list(range(len(archs))) if ids is None else list(ids)
        out = np.empty(len(archs))
        step = self.proto.chunk_size
        for c in range(0, len(archs), step):
            vals, factor = self(archs[c:c + step], ids[c:c + step], what)
            out[c:c + step] = vals
            if on_chunk is not None:
                on_chunk(ids[c:c + step], vals, factor)
        return out
