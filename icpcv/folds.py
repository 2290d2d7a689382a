"""Fold plans: leave-one-subject-out, grouped K-fold, and the deliberately leaky scan-level split.

A plan is a list of folds, each naming its held-out (test) scans, its training scans and its
inner-validation scans (for early stopping). The plan is frozen to disk with its hash before
any training starts, and :func:`audit` checks that no subject is on both the training side
(train + inner validation) and the test side of any fold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icpcv.errors import InputError
from icpcv.util import canonical_hash, natural_sorted


@dataclass(frozen=True)
class Fold:
    index: int
    held_out: tuple[str, ...]  # test subjects (all subjects of the test scans)
    inner_val: tuple[str, ...]  # subjects used for early stopping, never held out
    train: tuple[str, ...]  # subjects whose scans are fitted
    test_scans: tuple[str, ...]
    val_scans: tuple[str, ...]
    train_scans: tuple[str, ...]

    def to_dict(self) -> dict:
        return dict(index=self.index, held_out=list(self.held_out), inner_val=list(self.inner_val),
                    train=list(self.train), test_scans=list(self.test_scans),
                    val_scans=list(self.val_scans), train_scans=list(self.train_scans))

    @classmethod
    def from_dict(cls, d: dict) -> "Fold":
        return cls(index=int(d["index"]), **{k: tuple(str(x) for x in d[k]) for k in
                   ("held_out", "inner_val", "train", "test_scans", "val_scans", "train_scans")})


@dataclass(frozen=True)
class FoldPlan:
    kind: str  # the split: "subjects" (leave-one-out or grouped K-fold) or "scans" (leaky, for the audit)
    n_folds: int
    seed: int
    folds: tuple[Fold, ...]
    subjects: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        body = dict(kind=self.kind, n_folds=self.n_folds, seed=self.seed, subjects=list(self.subjects),
                    folds=[f.to_dict() for f in self.folds])
        return body | {"hash": canonical_hash(body)}

    @property
    def hash(self) -> str:
        return self.to_dict()["hash"]

    @classmethod
    def from_dict(cls, d: dict) -> "FoldPlan":
        plan = cls(kind=d["kind"], n_folds=int(d["n_folds"]), seed=int(d["seed"]),
                   folds=tuple(Fold.from_dict(f) for f in d["folds"]),
                   subjects=tuple(str(s) for s in d.get("subjects", ())))
        if "hash" in d and d["hash"] != plan.hash:
            raise InputError(f"fold plan hash mismatch: file says {d['hash']}, content hashes to {plan.hash}; "
                             "the plan was edited by hand")
        return plan


def _balanced_groups(subjects: list[str], sizes: dict[str, int], k: int, rng: np.random.Generator):
    """Assign subjects to k groups, largest first to the group with fewest scans (ties shuffled)."""
    order = list(rng.permutation(subjects))
    order.sort(key=lambda s: -sizes[s])  # stable: random among equal sizes
    groups = [[] for _ in range(k)]
    load = np.zeros(k)
    for s in order:
        g = int(np.argmin(load))
        groups[g].append(s)
        load[g] += sizes[s]
    return [natural_sorted(g) for g in groups]


def _inner_val(candidates: list[str], sizes: dict[str, int], fraction: float, rng: np.random.Generator,
               fold: int, n_folds: int, needed: bool = True):
    if fraction == 0:  # no early stopping asked for: every training-side subject is fitted
        return []
    n_val = max(1, int(round(fraction * len(candidates))))
    if len(candidates) - n_val < 1 and not needed:
        # no model early-stops and every model fits the inner-validation subjects too: keep them all on the
        # training side of this fold rather than refuse (a fold whose draw leaves one to train on is as before)
        return []
    if len(candidates) - n_val < 1:
        n = len(candidates)
        raise InputError(
            f"fold {fold + 1} of {n_folds} has {n} subject{'' if n == 1 else 's'} on its training side, and "
            f"--val-fraction {fraction:g} sets {n_val} of them aside for the networks' early stopping, leaving "
            "none to train on; use fewer --folds, or leave the networks out of --models (the other models need no "
            "inner validation and fit every training subject)")
    val = natural_sorted(rng.choice(candidates, size=n_val, replace=False).tolist())
    return val


def check_val_fraction(val_fraction: float, early_stopping_models=()) -> None:
    """``--val-fraction``: a share in [0, 1); 0 (no inner validation split) only without models that
    early-stop on it (the CNNs: ``early_stopping_models``). Raises InputError."""
    if not (0 <= val_fraction < 1):  # NaN fails too
        raise InputError(f"--val-fraction {val_fraction:g}: the share of training subjects set aside for early "
                         "stopping must be at least 0 and below 1 (default 0.25)")
    models = list(early_stopping_models)
    if val_fraction == 0 and models:
        raise InputError(f"--val-fraction 0 leaves no inner validation subjects, but {', '.join(models)} "
                         "early-stop on them; give a share above 0 (default 0.25), or drop "
                         f"{'it' if len(models) == 1 else 'them'} from --models")


def make_plan(scans: pd.DataFrame, *, n_folds: int | None = None, split: str = "subjects",
              val_fraction: float = 0.15, seed: int = 0, inner_val_needed: bool = True) -> FoldPlan:
    """Build a fold plan from a scan table with ``scan_id`` and ``subject`` columns.

    ``split="subjects"``: with ``n_folds`` None or equal to the number of subjects, leave one
    subject out; fewer folds give grouped K-fold (subjects balanced by scan count); more folds
    than subjects is an error. The inner validation subjects are drawn from the fold's training
    subjects, never the held-out ones.
    ``split="scans"``: a scan-level random K-fold that ignores subjects (leaky on purpose), for
    measuring the optimism of the naive design.
    ``inner_val_needed=False`` (no model early-stops: the baselines fit the inner-validation subjects
    too): a fold whose inner-validation draw would leave no subject to train on keeps them all on its
    training side instead of being refused; every other fold is drawn as with True.
    """
    check_val_fraction(val_fraction)
    rng = np.random.default_rng(seed)
    subjects = natural_sorted(scans["subject"].astype(str).unique())
    by_subject = {s: natural_sorted(g["scan_id"].astype(str)) for s, g in scans.groupby(scans["subject"].astype(str))}
    sizes = {s: len(v) for s, v in by_subject.items()}
    G = len(subjects)
    folds = []
    if split == "subjects":
        if G < 2:
            raise InputError(f"the table has only {G} subject{'' if G == 1 else 's'}"
                             f"{' (' + ', '.join(subjects) + ')' if subjects else ''} with usable scans: "
                             "cross-validation by subject holds each subject out in turn and needs at least 2 "
                             "(see data_quality.csv for the rows that were dropped)")
        k = G if n_folds is None else int(n_folds)
        if k > G:
            raise InputError(f"--folds {k} asks for more folds than there are subjects: the table has {G} "
                             f"subjects ({', '.join(subjects)}); use --folds {G} or fewer")
        if k < 2:
            raise InputError(f"--folds must be at least 2 (got {k})")
        groups = [[s] for s in subjects] if k == G else _balanced_groups(subjects, sizes, k, rng)
        for i, held in enumerate(groups):
            rest = [s for s in subjects if s not in held]
            val = _inner_val(rest, sizes, val_fraction, rng, i, k, needed=inner_val_needed)
            train = [s for s in rest if s not in val]
            folds.append(Fold(i, tuple(held), tuple(val), tuple(train),
                              tuple(x for s in held for x in by_subject[s]),
                              tuple(x for s in val for x in by_subject[s]),
                              tuple(x for s in train for x in by_subject[s])))
        kind = "subjects"
    elif split == "scans":
        k = 5 if n_folds is None else int(n_folds)
        ids = scans["scan_id"].astype(str).to_numpy()
        subj_of = dict(zip(ids, scans["subject"].astype(str)))
        perm = rng.permutation(len(ids))
        parts = np.array_split(perm, k)
        for i, part in enumerate(parts):
            test = natural_sorted(ids[part])
            rest = np.setdiff1d(perm, part)
            rest = rng.permutation(rest)
            n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * len(rest))))
            val, train = natural_sorted(ids[rest[:n_val]]), natural_sorted(ids[rest[n_val:]])
            folds.append(Fold(i, tuple(natural_sorted({subj_of[x] for x in test})),
                              tuple(natural_sorted({subj_of[x] for x in val})),
                              tuple(natural_sorted({subj_of[x] for x in train})),
                              tuple(test), tuple(val), tuple(train)))
        kind = "scans"
    else:
        raise InputError(f"unknown --split {split!r}; use 'subjects' or 'scans'")
    return FoldPlan(kind=kind, n_folds=k, seed=seed, folds=tuple(folds), subjects=tuple(subjects))


def audit(plan: FoldPlan, scans: pd.DataFrame) -> dict:
    """Check a plan against the scan table. Returns a dict with ``passed`` and per-fold findings.

    Checks, per fold: no subject has scans on both the training side (train + inner validation)
    and the test side; the three scan sets are disjoint; every scan id exists. Across folds:
    every scan is tested exactly once.
    """
    subj_of = dict(zip(scans["scan_id"].astype(str), scans["subject"].astype(str)))
    findings = []
    tested: dict[str, int] = {}
    for f in plan.folds:
        unknown = [x for x in f.test_scans + f.val_scans + f.train_scans if x not in subj_of]
        test_s = {subj_of.get(x) for x in f.test_scans}
        fit_s = {subj_of.get(x) for x in f.train_scans + f.val_scans}
        shared = natural_sorted(s for s in test_s & fit_s if s is not None)
        overlap = len(set(f.test_scans) & (set(f.train_scans) | set(f.val_scans))) + \
            len(set(f.train_scans) & set(f.val_scans))
        val_held = natural_sorted(set(f.inner_val) & set(f.held_out))
        for x in f.test_scans:
            tested[x] = tested.get(x, 0) + 1
        findings.append(dict(fold=f.index, subjects_in_train_and_test=shared, scans_in_two_sets=overlap,
                             unknown_scans=unknown[:5], n_unknown=len(unknown), inner_val_held_out=val_held,
                             ok=not shared and not overlap and not unknown and not val_held))
    never = [x for x in subj_of if x not in tested]
    twice = [x for x, n in tested.items() if n > 1]
    passed = all(r["ok"] for r in findings) and not never and not twice
    return dict(passed=passed, plan_kind=plan.kind, plan_hash=plan.hash, folds=findings,
                scans_never_tested=len(never), scans_tested_twice=len(twice),
                summary=("no subject is on both sides of any fold" if passed else
                         f"LEAKAGE: {sum(bool(r['subjects_in_train_and_test']) for r in findings)} of "
                         f"{len(findings)} folds share subjects between training and test"))


def nested_trainings(n_subjects: int, *, candidates: int, n_folds: int | None = None, inner_folds: int | None = None,
                     repeats: int = 1) -> dict:
    """How many trainings ``run --tune`` adds (issue 21): per outer fold, every candidate on every inner fold of the
    fold's training monkeys, plus every candidate's fit on the outer fold (``repeats`` times for a network); a plain
    run trains one recipe once per fold (``repeats`` times). Outer folds as :func:`make_plan` makes them (grouped
    folds: the largest training side is counted for every fold's inner folds, an upper bound).

    >>> d = nested_trainings(14, candidates=4)
    >>> d["inner"], d["outer_fits"], d["plain"], d["ratio"]
    (728, 56, 14, 56.0)
    """
    k = n_subjects if n_folds is None else int(n_folds)
    training_monkeys = n_subjects - n_subjects // k  # leave-one-out: G - 1
    inner = training_monkeys if inner_folds is None else min(int(inner_folds), training_monkeys)
    n_inner = k * candidates * inner
    outer = k * candidates * repeats
    plain = k * repeats
    return dict(outer_folds=k, inner_folds=inner, candidates=candidates, inner=n_inner, outer_fits=outer,
                total=n_inner + outer, plain=plain, ratio=(n_inner + outer) / plain)
