"""The search loop with its checkpoint: initial set, iterations, stop rules, resume.

Every finished iteration is committed (its scored archs, the generator's state, the
strategy's state and the measures so far); a run started on a folder that holds a
checkpoint of the same search continues after its last committed iteration and ends
exactly as an uninterrupted run would.

A checkpoint whose search differs only in a larger stopping rule (`search.budget`,
`search.iterations`, `search.stall_iterations`) continues too, and ends as one run with
the larger rule would: strategies read the budget only to cap an iteration's batch
(`min(batch, remaining)`, batches at most `init_size`, `budget_per_iter` or
`population_size`), so every iteration that started with at least that many evaluations
left is the same under both budgets; the ones after it are rolled back and run again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from blockprof.common.errors import UserError
from blockprof.common.progress import progress
from blockprof.search.checkpoint import Checkpoint
from blockprof.search.strategies import Strategy

log = logging.getLogger(__name__)
# keys of `search` that only say when to stop: a larger one continues a checkpoint
STOP_RULES = ("budget", "iterations", "stall_iterations")
# strategy options that bound how many archs one iteration may score
BATCH_KEYS = ("init_size", "budget_per_iter", "population_size")


@dataclass
class SearchResult:
    iteration: int
    stop_reason: str
    history: list[dict]
    resumed_from: int | None = None
    notes: list[str] = field(default_factory=list)


def _pick(d: dict, dotted: str):
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


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

    def _state(self, it: int, stall: int, reason: str | None) -> dict:
        return {"iteration": it, "stall": stall, "stop_reason": reason, "rng": self.rng.bit_generator.state,
                "strategy": self.s.state_dict(), "queries": self.s.ev.queries,
                "checks_uncached": self.s.ev.checks_uncached}

    def _commit(self, it: int, stall: int, reason: str | None, measures: dict) -> None:
        state = self._state(it, stall, reason)
        frame = self.s.ev.take_frame()
        frame["measures"] = measures
        frame["state"] = state  # where a continuation to a larger budget may restart from
        self.ckpt.commit(frame, {"fingerprint": self.fingerprint, **state})

    def _extension(self, old: dict) -> list[str] | None:
        """The stopping rules this search raises over the checkpoint's (`old` fingerprint);
        None when the two differ in anything else or lower a rule."""
        diff = _diff_keys(old, self.fingerprint)
        if not diff or any(k not in {f"search.{r}" for r in STOP_RULES} for k in diff):
            return None
        for k in diff:
            a, b = old["search"].get(k[7:]), self.fingerprint["search"].get(k[7:])
            if not (b is None or (a is not None and b >= a)):  # None: no iteration limit
                return None
        return diff

    def _load_checked(self) -> tuple[dict, list[dict]]:
        try:
            state, frames = self.ckpt.load()
        except (ValueError, KeyError, OSError) as exc:
            raise UserError(f"cannot resume from {self.ckpt.dir}: damaged checkpoint ({exc}); "
                            "start in a new run folder") from None
        if state["fingerprint"] != self.fingerprint and self._extension(state["fingerprint"]) is None:
            diff = _diff_keys(state["fingerprint"], self.fingerprint)
            lowered = [k for k in diff if k in {f"search.{r}" for r in STOP_RULES}]
            hint = (f"; a checkpoint continues only to larger {', '.join(lowered)}" if lowered and
                    len(lowered) == len(diff) else "")
            raise UserError(f"run folder {self.ckpt.dir.parent} holds a checkpoint of a different search "
                            f"(differs in: {', '.join(diff[:6])}){hint}; rerun with the same config or use a new folder")
        return state, frames

    def _restart_point(self, old: dict, frames: list[dict]) -> int:
        """How many frames a continuation keeps: those of the iterations that started with at
        least one full batch of the old budget left (so the old budget did not shape them)."""
        old_budget = int(old["search"]["budget"])
        if int(self.fingerprint["search"]["budget"]) == old_budget:
            return len(frames)
        batch = max([int(v) for k in BATCH_KEYS if isinstance(v := getattr(self.s.cfg, k, None), int)] or [1])
        done = 0
        for i, fr in enumerate(frames):
            if old_budget - done < batch:
                return i
            done += len(fr["archs"])
        return len(frames)

    def _continue(self, state: dict, frames: list[dict]) -> tuple[dict, list[dict]] | None:
        """Roll a checkpoint of a search with smaller stopping rules back to where this one's
        iterations start to differ; None when none of it can be kept (start afresh)."""
        old = state["fingerprint"]
        keep = self._restart_point(old, frames)
        changes = ", ".join(f"{k} {_pick(old, k)} -> {_pick(self.fingerprint, k)}" for k in self._extension(old))
        if keep == 0:
            log.info("continuing the search in %s (%s): its first iteration already felt the old budget; "
                     "starting it again", self.ckpt.dir.parent, changes)
            self.ckpt.state_path.unlink()
            self.ckpt.frames = 0
            return None
        if keep < len(frames):
            if "state" not in frames[keep - 1]:
                raise UserError(f"the checkpoint in {self.ckpt.dir} was written by an older blockprof that kept no "
                                "per-iteration state: it cannot continue to a larger search.budget; use a new folder")
            state = {"fingerprint": self.fingerprint, **frames[keep - 1]["state"]}
            self.ckpt.rollback(keep, state)
            frames = frames[:keep]
        else:
            state = dict(state, fingerprint=self.fingerprint)
        log.info("continuing the search in %s (%s) from iteration %d, %d evaluations", self.ckpt.dir.parent,
                 changes, int(state["iteration"]), sum(len(fr["archs"]) for fr in frames))
        return state, frames

    def check_resumable(self) -> None:
        """A checkpoint in the folder is readable and of this search (UserError if not),
        checked before the run starts."""
        if self.ckpt.exists():
            self._load_checked()

    def _resume(self) -> tuple[int, int, str | None, list[dict]] | None:
        state, frames = self._load_checked()
        extended = state["fingerprint"] != self.fingerprint
        if extended:
            kept = self._continue(state, frames)
            if kept is None:
                return None
            state, frames = kept
        for fr in frames:
            self.s.ev.apply_frame(fr)
        self.s.ev.queries = int(state["queries"])
        self.s.ev.checks_uncached = int(state.get("checks_uncached", 0))
        self.rng.bit_generator.state = state["rng"]
        self.s.load_state_dict(state["strategy"])
        it, stall = int(state["iteration"]), int(state["stall"])
        # a larger stopping rule: the old run's reason to stop may no longer hold
        reason = self._stop_reason(it, stall) if extended else state["stop_reason"]
        return it, stall, reason, [fr["measures"] for fr in frames]

    def run(self) -> SearchResult:
        resumed = None
        loaded = self._resume() if self.ckpt.exists() else None
        if loaded is not None:
            it, stall, reason, history = loaded
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
        bar = progress(None, desc=f"search {self.s.cfg.name}", total=int(self.s.cfg.budget), enabled=self.show_progress,
                       fmt="{desc}: evaluations {n} of budget {total} (iteration {it}{eta})", initial=self.s.ev.evaluations,
                       postfix={"it": it})
        try:
            while reason is None:
                it += 1
                before = self.s.ev.evaluations
                self.s.step(it)
                stall = stall + 1 if self.s.ev.evaluations == before else 0
                history.append(dict(iteration=it, **self.s.measures()))
                reason = self._stop_reason(it, stall)
                self._commit(it, stall, reason, history[-1])
                self.on_iteration(it, history[-1])
                bar.set_postfix(it=it)
                bar.update(self.s.ev.evaluations - before)
        finally:
            bar.close()
        log.info("search %s: evaluations %d of budget %d, %d iterations (stopped: %s)", self.s.cfg.name,
                 self.s.ev.evaluations, int(self.s.cfg.budget), it, reason)
        return SearchResult(it, reason, history, resumed)
