"""The inner plans of ``run --tune``: folds made of each outer fold's training monkeys only.

For outer fold k, the monkeys on its training side (training + inner-validation monkeys of the
outer plan) are split again by :func:`icpcv.folds.make_plan`: leave one of them out at a time
(default) or ``--inner-folds K`` monkey groups, each inner fold drawing its own inner-validation
monkeys (for a network's early stopping) from inside its inner training side. The held-out
monkey of fold k is not in the table the inner plan is made from, so nothing about it (not its
scans, labels or volumes) can reach the choice made in fold k. The plans are frozen in
``tuning_plan.json`` before any training, like ``fold_plan.json``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from icpcv.errors import InputError
from icpcv.folds import FoldPlan, make_plan
from icpcv.tune.spec import TuneSpec
from icpcv.util import canonical_hash


def inner_seed(seed: int, k: int) -> int:
    """The seed of outer fold ``k``'s inner plan (its groups and inner-validation draws)."""
    return int(np.random.SeedSequence([int(seed), int(k), 21]).generate_state(1)[0])


def inner_plan(scans: pd.DataFrame, outer: FoldPlan, k: int, *, inner_folds: int | None, val_fraction: float,
               seed: int) -> FoldPlan:
    """The inner plan of outer fold ``k``, made from ``scans`` restricted to the fold's training side."""
    part = outer.folds[k]
    side = set(part.train_scans) | set(part.val_scans)
    table = scans[scans["scan_id"].astype(str).isin(side)]
    n_monkeys = table["subject"].astype(str).nunique()
    if n_monkeys < 2:
        raise InputError(f"--tune: outer fold {k + 1} has {n_monkeys} monkey on its training side; inner folds "
                         "need at least 2 (use fewer --folds)")
    n = None if inner_folds is None else min(int(inner_folds), n_monkeys)
    try:
        return make_plan(table, n_folds=n, split="subjects", val_fraction=val_fraction, seed=inner_seed(seed, k))
    except InputError as exc:
        raise InputError(f"--tune: the inner folds of outer fold {k + 1} ({n_monkeys} training monkeys): {exc}") \
            from None


def make_tuning_plan(scans: pd.DataFrame, outer: FoldPlan, spec: TuneSpec, *, inner_folds: int | None,
                     val_fraction: float, seed: int, repeats: list[int]) -> dict:
    """``tuning_plan.json``: the spec, each outer fold's inner plan, and each candidate's outer-fit repeats."""
    if inner_folds is not None and inner_folds < 2:
        raise InputError(f"--inner-folds {inner_folds}: give at least 2 (default: one per training monkey)")
    folds = []
    for k, part in enumerate(outer.folds):
        plan = inner_plan(scans, outer, k, inner_folds=inner_folds, val_fraction=val_fraction, seed=seed)
        leaked = sorted(set(plan.subjects) & set(part.held_out))
        if leaked:  # cannot happen (the table excludes them); checked as the plan audit checks its folds
            raise AssertionError(f"inner plan of fold {k} holds held-out monkey(s) {leaked}")
        folds.append(dict(fold=k, held_out=list(part.held_out), inner=plan.to_dict()))
    body = dict(spec=spec.to_dict(), inner_folds=inner_folds, val_fraction=val_fraction, seed=seed,
                repeats=[int(r) for r in repeats], folds=folds)
    return body | {"hash": canonical_hash(body)}


def units_shape(tuning_plan: dict) -> dict:
    """What :class:`icpcv.rundir.RunRecord` keeps of the plan to list the units: inner folds per outer fold,
    outer-fit repeats per candidate."""
    return dict(inner=[int(f["inner"]["n_folds"]) for f in tuning_plan["folds"]],
                repeats=list(tuning_plan["repeats"]), plan_hash=tuning_plan["hash"])
