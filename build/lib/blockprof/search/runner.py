"""The search loop with its checkpoint: initial set, iterations, stop rules, resume.

Every finished iteration is committed (its scored archs, the generator's state, the
strategy's state and the measures so far); a run started on a folder that holds a
checkpoint of the same search continues after its last committed iteration and ends
exactly as an uninterrupted run would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from blockprof.common.errors import UserError
from blockprof.common.progress import progress
from blockprof.search.checkpoint import Checkpoint
from blockprof.search.strategies import Strategy


@dataclass
class SearchResult:
    iteration: int
    stop_reason: str
    history: list[dict]
    resumed_from: int | None = None
    notes: list[str] = field(default_factory=list)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


class SearchRunner:
    def __init__(self, strategy: Strategy, checkpoint: Checkpoint, rng: np.random.Generator,
                 fingerprint: dict, on_iteration: Callable[[int, dict], None] | None = None,
                 show_progress: bool = True):
        self.s, self.ckpt, self.rng = strategy, checkpoint, rng
        self.fingerprint = fingerprint
        self.on_iteration = on_iteration or (lambda it, m: None)
        self.show_progress = show_progress

    def _stop_reason(self, it: int, stall: int) -> str | None:
        c = self.s.cfg
        if self.s.ev.evaluations >= c.budget:
            return "budget"
        if c.iterations is not None and it >= c.iterations:
            return "iterations"
        if stall >= c.stall_iterations:
            return "stalled"
        return None

    def _commit(self, it: int, stall: int, reason: str | None, measures: dict) -> None:
        state = {"fingerprint": self.fingerprint, "iteration": it, "stall": stall, "stop_reason": reason,
                 "rng": self.rng.bit_generator.state, "strategy": self.s.state_dict(), "queries": self.s.ev.queries,
                 "checks_uncached": self.s.ev.checks_uncached}
        frame = self.s.ev.take_frame()
        frame["measures"] = measures
        self.ckpt.commit(frame, state)

    def _load_checked(self) -> tuple[dict, list[dict]]:
        try:
            state, frames = self.ckpt.load()
        except (ValueError, KeyError, OSError) as exc:
            raise UserError(f"cannot resume from {self.ckpt.dir}: damaged checkpoint ({exc}); "
                            "start in a new run folder") from None
        if state["fingerprint"] != self.fingerprint:
            diff = _diff_keys(state["fingerprint"], self.fingerprint)
            raise UserError(f"run folder {self.ckpt.dir.parent} holds a checkpoint of a different search "
                            f"(differs in: {', '.join(diff[:6])}); rerun with the same config or use a new folder")
        return state, frames

    def check_resumable(self) -> None:
        """A checkpoint in the folder is readable and of this search (UserError if not),
        checked before the run starts."""
        if self.ckpt.exists():
            self._load_checked()

    def _resume(self) -> tuple[int, int, str | None, list[dict]]:
        state, frames = self._load_checked()
        for fr in frames:
            self.s.ev.apply_frame(fr)
        self.s.ev.queries = int(state["queries"])
        self.s.ev.checks_uncached = int(state.get("checks_uncached", 0))
        self.rng.bit_generator.state = state["rng"]
        self.s.load_state_dict(state["strategy"])
        return int(state["iteration"]), int(state["stall"]), state["stop_reason"], [fr["measures"] for fr in frames]

    def run(self) -> SearchResult:
        resumed = None
        if self.ckpt.exists():
            it, stall, reason, history = self._resume()
            resumed = it
            for i, m in enumerate(history):
                self.on_iteration(i, m)  # replay into this run's tracking
        else:
            self.ckpt.start_fresh()
            self.s.initialize()
            if self.s.ev.evaluations == 0:
                raise UserError("the initial set is empty: search.budget or the initial size is 0, "
                                "or the insight space has no arch")
            self.s.setup_measures()
            it, stall = 0, 0
            history = [dict(iteration=0, **self.s.measures())]
            reason = self._stop_reason(0, 0)
            self._commit(0, 0, reason, history[-1])
            self.on_iteration(0, history[-1])
        # the bar counts evaluations: the budget is the stopping rule
        bar = progress(None, desc=f"search {self.s.cfg.name}", total=int(self.s.cfg.budget), enabled=self.show_progress)
        bar.update(self.s.ev.evaluations)
        while reason is None:
            it += 1
            before = self.s.ev.evaluations
            self.s.step(it)
            stall = stall + 1 if self.s.ev.evaluations == before else 0
            history.append(dict(iteration=it, **self.s.measures()))
            reason = self._stop_reason(it, stall)
            self._commit(it, stall, reason, history[-1])
            self.on_iteration(it, history[-1])
            bar.update(self.s.ev.evaluations - before)
        bar.close()
        return SearchResult(it, reason, history, resumed)
