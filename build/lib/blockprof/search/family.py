"""The search's view of a space family: its `FamilyOps` (mutation, crossover, sampling
over a profile's candidates). Each family module under `blockprof.core.families`
defines its own; the space hands it out as `space.ops`."""
from __future__ import annotations

from blockprof.core.space import DesignSpace, FamilyOps

__all__ = ["FamilyOps", "family_ops"]


def family_ops(space: DesignSpace) -> FamilyOps:
    return space.ops
