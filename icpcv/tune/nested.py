"""``run --tune``'s nested selection in memory, for simulations (``icpcv bench tune``) and tests.

The same plans (:func:`icpcv.folds.make_plan`, :func:`icpcv.tune.plan.inner_plan`), the same fit of a
candidate (:func:`icpcv.tune.job.fit_candidate`, seeds included) and the same rule
(:func:`icpcv.tune.select.choose`) as a run directory's units, without the run directory: no files,
one process, training repeat 0 only. A run's ``tuning.json`` and this give the same choices
(tests/test_tune.py checks it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from icpcv.cohort import ScanSet
from icpcv.config import TrainConfig
from icpcv.folds import make_plan
from icpcv.models import FitContext
from icpcv.tune.job import fit_candidate, inner_training_seed
from icpcv.tune.plan import inner_plan
from icpcv.tune.select import choose
from icpcv.tune.spec import TuneSpec


def _mae(y, p) -> float:
    return float(np.mean(np.abs(np.asarray(p, float) - np.asarray(y, float))))


def nested_in_memory(scans: pd.DataFrame, volumes: np.ndarray | None, spec: TuneSpec, *, n_folds: int | None = None,
                     inner_folds: int | None = None, val_fraction: float = 0.25, seed: int = 0,
                     train: TrainConfig | None = None, device: str = "cpu") -> dict:
    """Nested selection over a cohort held in memory (``scans``: ``scan_id, subject, iop, icp``; ``volumes[i]``
    the volume of row i). Returns ``candidates`` (every candidate's outer predictions, model = its label),
    ``tuned`` (the choice's, model = ``spec.name``), ``choices`` (label per outer fold) and ``scores``
    (per outer fold, the inner MAE of each candidate)."""
    scans = scans.reset_index(drop=True).copy()
    volumes = None if volumes is None else np.asarray(volumes, dtype=np.float32)  # as VolumeStore gives them
    for col in ("scan_id", "subject"):  # plain Python strings: far quicker to index than Arrow-backed ones
        scans[col] = pd.Series(scans[col].astype(str).to_numpy(dtype=object), dtype=object)
    data = ScanSet.from_arrays(scans, volumes)
    by_id = scans.set_index("scan_id", drop=False)
    row = {x: i for i, x in enumerate(scans["scan_id"])}  # positions: far quicker than .loc on string labels
    shape = tuple(volumes.shape[1:]) if volumes is not None else None
    train = train or TrainConfig()

    def part_set(ids) -> ScanSet:
        return ScanSet(by_id.iloc[[row[x] for x in ids]], data.get_volumes)

    sets: dict = {}  # a part's three scan sets, made once and shared by the candidates

    def fit(cand, part, seed_, base, k, j):
        if (k, j) not in sets:
            sets[(k, j)] = tuple(part_set(ids) for ids in (part.train_scans, part.val_scans, part.test_scans))
        tr, va, te = sets[(k, j)]
        ctx = FitContext(train=train, seed=seed_, shape=shape, device=device)
        _, y_pred, _, _ = fit_candidate(cand, tr, va, te, ctx, base=base, k=k, j=j)
        return te.frame, y_pred

    outer = make_plan(scans, n_folds=n_folds, split="subjects", val_fraction=val_fraction, seed=seed)
    rows, tuned, choices, scores = [], [], [], []
    for k, part in enumerate(outer.folds):
        inner = inner_plan(scans, outer, k, inner_folds=inner_folds, val_fraction=val_fraction, seed=seed)
        fold_scores, outer_preds = [], []
        for c, cand in enumerate(spec.candidates):
            base = int(cand.options.get("seed", seed))
            ys, ps = [], []
            for j, ip in enumerate(inner.folds):
                test, y_pred = fit(cand, ip, inner_training_seed(base, k, j), base, k, j)
                ys.append(test["icp"].to_numpy(float))
                ps.append(y_pred)
            fold_scores.append(dict(candidate=c, label=cand.label, inner_mae=_mae(np.concatenate(ys), np.concatenate(ps))))
            # the outer fit: repeat 0's seed of a plain run (icpcv.run.fold.training_seed(base, k, 0))
            test, y_pred = fit(cand, part, base * 1000 + k, base, k, -1)
            table = pd.DataFrame(dict(fold=k, subject=test["subject"].to_numpy(), scan_id=test["scan_id"].to_numpy(),
                                      model=cand.label, y_true=test["icp"].to_numpy(float), y_pred=y_pred,
                                      iop=test["iop"].to_numpy(float)))
            outer_preds.append(table)
        rows += outer_preds
        c = choose(fold_scores)
        choices.append(spec.candidates[c].label)
        scores.append(fold_scores)
        tuned.append(outer_preds[c].assign(model=spec.name))
    return dict(candidates=pd.concat(rows, ignore_index=True), tuned=pd.concat(tuned, ignore_index=True),
                choices=choices, scores=scores)
