"""A search strategy from outside blockprof: mutate only the most accurate arch found so far."""
from __future__ import annotations

from dataclasses import dataclass

from blockprof.search.mutation import mutate_archs
from blockprof.search.strategies import SearchConfig, Strategy


@dataclass
class HillClimbConfig(SearchConfig):
    name: str = "hill_climb"
    init_size: int = 10
    budget_per_iter: int = 10


class HillClimb(Strategy):
    Config = HillClimbConfig

    def initialize(self):
        self.ev.score(self.sample_unique(min(self.cfg.init_size, self.cfg.budget)), 0, "init")

    def step(self, it):
        best = self.ev.archs[int(self.acc().argmax())]
        n = min(self.cfg.budget_per_iter, self.remaining)
        kids = mutate_archs(self.mutator, [best], n, self.rng, seen=self.ev.__contains__)
        self.ev.score(kids, it, "mutate")
