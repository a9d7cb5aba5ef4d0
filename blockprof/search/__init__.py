"""Predictor-guided search (task=search).

- `pareto`: non-dominated sorting, 2-D hypervolume, best accuracy under a budget;
- `insight`: insight (reduced) spaces: the paper's profiles, `<name>_random`, `from_profile`;
- `mutation`: the unit-level mutator, OFA-style genetic operators, `mutate_archs`;
- `evaluator`: the memo of scored archs (budget = unique archs);
- `strategies`: rm_pareto, rm_cons_acc, evolution, bands, random (the `search` config group);
- `checkpoint` / `runner`: the iteration loop with crash-safe resume.
"""
