"""The unit-level mutator of the paper's random-mutation search, over an insight profile.

One mutation: each unit is picked with its profile probability (and the resolution
with `resolution_prob`), redrawn until at least one is picked; each picked unit gets
one edit chosen uniformly among the valid ones (add a layer, remove a layer, swap a
layer's block; ResNet adds width and stem edits, see the family modules' ops); the resolution
moves to another allowed one. Never outside the profile's candidates or min/max layers.

Also here: sampling inside a profile, OFA-style genetic operators (evolution), a
cost-lowering `shrink` (repair of archs over a constraint), and `mutate_archs`, which
grows unseen children from parents with mutation chains. All randomness comes from
the passed `np.random.Generator`; every redraw loop has a cap.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from blockprof.common.errors import UserError
from blockprof.core.space import Arch, DesignSpace
from blockprof.search.insight import InsightProfile, profile_fits

PICK_CAP = 1000  # redraws of the unit selection before giving up on one mutation


class Mutator:
    def __init__(self, space: DesignSpace, profile: InsightProfile, resolutions: Sequence[int] | None = None,
                 resolution_prob: float = 0.25):
        self.space, self.profile, self.ops = space, profile, space.ops
        res = tuple(int(r) for r in (resolutions if resolutions else space.resolutions))
        for r in res:
            space.check_resolution(r)
        if len(set(res)) != len(res):
            raise UserError(f"search.resolutions lists a resolution twice: {list(res)}")
        self.resolutions = tuple(sorted(res))
        if not 0 <= resolution_prob <= 1:
            raise UserError(f"resolution mutation probability must be in [0, 1], not {resolution_prob}")
        self.resolution_prob = float(resolution_prob) if len(self.resolutions) > 1 else 0.0
        self.cands = profile.candidates
        self.lo, self.hi = profile.min_layers, profile.max_layers
        self.probs = np.array(list(profile.mutate_probs) + [self.resolution_prob])

    # ------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, n: int) -> list[Arch]:
        """n archs uniform inside the profile: per unit the depth, then each layer; the resolution."""
        units = self.ops.sample_units(self.cands, self.lo, self.hi, rng, n)
        res = rng.integers(0, len(self.resolutions), size=n)
        return [Arch(tuple(u), self.resolutions[int(r)]) for u, r in zip(units, res)]

    def fits(self, arch: Arch) -> bool:
        return profile_fits(self.space, self.profile, arch, self.ops, self.resolutions)

    # ------------------------------------------------------------ random mutation
    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """One mutation (the seed's stage-level mutator, plus the resolution)."""
        U = len(self.cands)
        edits = [self.ops.edits(self.cands[u], u, arch.units[u], self.lo[u], self.hi[u]) for u in range(U)]
        can = np.array([bool(e) for e in edits] + [self.resolution_prob > 0])
        p = np.where(can, self.probs, 0.0)
        if not (p > 0).any():
            return arch
        for _ in range(PICK_CAP):
            picked = (rng.random(U + 1) < p)
            if picked.any():
                break
        else:  # vanishing probabilities: take the most likely one
            picked = np.zeros(U + 1, dtype=bool)
            picked[int(np.argmax(p))] = True
        units = list(arch.units)
        for u in np.flatnonzero(picked[:U]):
            e = edits[u][int(rng.integers(len(edits[u])))]
            units[u] = self.ops.apply(e, self.cands[u], int(u), units[u], rng)
        res = arch.resolution
        if picked[U]:
            others = [r for r in self.resolutions if r != res]
            res = others[int(rng.integers(len(others)))]
        return Arch(tuple(units), res)

    # ------------------------------------------------------------ genetic operators (evolution)
    def gene_mutate(self, arch: Arch, p: float, p_res: float, rng: np.random.Generator) -> Arch:
        """OFA's mutation: each gene (depth, kernel, expansion, width...) redrawn with
        probability p, the resolution redrawn uniformly with probability p_res."""
        res = arch.resolution
        if len(self.resolutions) > 1 and rng.random() < p_res:
            res = self.resolutions[int(rng.integers(len(self.resolutions)))]
        units = tuple(self.ops.gene_mutate(self.cands[u], u, layers, self.lo[u], self.hi[u], p, rng)
                      for u, layers in enumerate(arch.units))
        return Arch(units, res)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """OFA's crossover: every gene from either parent."""
        res = a.resolution if rng.random() < 0.5 else b.resolution
        return Arch(tuple(self.ops.crossover(u, x, y, rng) for u, (x, y) in enumerate(zip(a.units, b.units))), res)

    def pack(self, archs: Sequence[Arch]):
        """Parents in batch form for `gene_mutate_rows` / `crossover_rows`."""
        return self.ops.pack(list(archs)), [a.resolution for a in archs]

    def gene_mutate_rows(self, packed, rows, p: float, p_res: float, rng: np.random.Generator) -> list[Arch]:
        """`gene_mutate` of packed parents (one child per entry of rows), in one batch."""
        units = self.ops.gene_mutate_rows(self.cands, self.lo, self.hi, packed[0], rows, p, rng)
        res = [packed[1][int(r)] for r in rows]
        if len(self.resolutions) > 1 and len(res):
            flip = rng.random(len(res)) < p_res
            pick = rng.integers(0, len(self.resolutions), size=len(res))
            res = [self.resolutions[int(j)] if f else r for r, f, j in zip(res, flip, pick)]
        return [Arch(tuple(u), r) for u, r in zip(units, res)]

    def crossover_rows(self, packed, rows_a, rows_b, rng: np.random.Generator) -> list[Arch]:
        units = self.ops.crossover_rows(packed[0], rows_a, rows_b, rng)
        side = rng.random(len(units)) < 0.5
        return [Arch(tuple(u), packed[1][int(i)] if s else packed[1][int(j)])
                for u, i, j, s in zip(units, rows_a, rows_b, side)]

    # ------------------------------------------------------------ repair
    def shrink(self, arch: Arch, rng: np.random.Generator) -> Arch | None:
        """One cost-lowering edit (remove a layer, a lower resolution, a narrower width,
        the skipped stem conv), uniformly among those possible; None when none is."""
        moves = [(u, e) for u in range(len(self.cands))
                 for e in self.ops.shrink_edits(self.cands[u], u, arch.units[u], self.lo[u])]
        lower = [r for r in self.resolutions if r < arch.resolution]
        if lower:
            moves.append((-1, "resolution"))
        if not moves:
            return None
        u, e = moves[int(rng.integers(len(moves)))]
        if u < 0:
            return Arch(arch.units, lower[-1])
        units = list(arch.units)
        units[u] = self.ops.shrink(e, self.cands[u], u, units[u], rng)
        return Arch(tuple(units), arch.resolution)


def mutate_archs(mutator: Mutator, parents: Sequence[Arch], n: int, rng: np.random.Generator, *,
                 seen: Callable[[Arch], bool], depth: int = 1, attempts_per_arch: int = 100,
                 stall_rounds: int = 10) -> list[Arch]:
    """Up to n unseen, distinct children of `parents` (the seed's `mutate_archs`).

    Rounds over the parents: from each, a chain of up to `depth` successive
    mutations, each link an arch never seen before (`seen`, and not yet produced),
    found within `attempts_per_arch` tries or the chain stops. Rounds repeat until n
    children exist; `stall_rounds` rounds in a row without a new child end it. The
    last round's children are shuffled before the cut, so no parent is favoured.
    """
    if n <= 0 or not parents:
        return []
    out: list[Arch] = []
    made: set[Arch] = set()
    stalled = 0
    while len(out) < n and stalled < stall_rounds:
        before = len(out)
        for parent in parents:
            cur = parent
            for _ in range(depth):
                for _ in range(attempts_per_arch):
                    child = mutator.mutate(cur, rng)
                    if child not in made and not seen(child):
                        break
                else:
                    break  # no new neighbour of this link: next parent
                made.add(child)
                out.append(child)
                cur = child
        stalled = stalled + 1 if len(out) == before else 0
        if len(out) > n:
            keep = n - before  # children of this last round: a random subset, order kept
            last = np.sort(rng.permutation(len(out) - before)[:keep])
            out = out[:before] + [out[before + int(i)] for i in last]
    return out
