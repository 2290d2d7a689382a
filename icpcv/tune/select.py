"""The choice of ``run --tune``, from its complete units: ``tuning.json`` and the tuned model's predictions.

Per outer fold k and candidate c, the inner score is the MAE over every scan of the inner folds'
left-out training monkeys (each training monkey predicted once, scans pooled as the analysis'
``mae``). The candidate with the lowest inner score is chosen (a tie: the one listed first); its
outer fit (trained on all of fold k's training monkeys) gives the tuned model's predictions of
the held-out monkey. Every candidate's outer fit is also kept (``tuning_candidates.csv``): its
plain leave-one-monkey-out result, for the optimism audit.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from icpcv.rundir import REPEAT_COLUMN, RunDir, RunRecord, Unit
from icpcv.stats.selection import choice_stability
from icpcv.tune.spec import TuneSpec


def _mae(table: pd.DataFrame) -> float:
    return float(np.mean(np.abs(table["y_pred"].to_numpy(float) - table["y_true"].to_numpy(float))))


def inner_scores(run: RunDir, rec: RunRecord, k: int, n_candidates: int) -> list[dict]:
    """Candidate by candidate, the inner score of outer fold ``k`` from its inner units' predictions."""
    n_inner = int(rec.tuning["inner"][k])
    out = []
    for c in range(n_candidates):
        table = pd.concat([run.unit(Unit(k, 0, c, j)).read_predictions() for j in range(n_inner)], ignore_index=True)
        out.append(dict(candidate=c, inner_mae=_mae(table), n_scans=int(len(table)),
                        n_monkeys=int(table["subject"].nunique())))
    return out


def choose(scores: list[dict]) -> int:
    """The candidate with the lowest inner MAE; a tie goes to the one listed first."""
    return int(np.argmin([s["inner_mae"] for s in scores]))


def _outer(run: RunDir, rec: RunRecord, k: int, c: int) -> pd.DataFrame:
    reps = int(rec.tuning["repeats"][c])
    return pd.concat([run.unit(Unit(k, r, c)).read_predictions() for r in range(reps)], ignore_index=True)


def write_tuning(run_dir) -> tuple[dict, pd.DataFrame]:
    """Write ``tuning.json`` and ``tuning_candidates.csv`` from the complete tuning units; returns tuning.json's
    content and the tuned model's predictions (model = the spec's name, in the run's predictions columns)."""
    run = RunDir(run_dir)
    rec = run.read_record()
    tplan = run.read_tuning_plan()
    spec = TuneSpec.from_dict(tplan["spec"])
    C = len(spec.candidates)
    repeated = rec.config.repeats > 1
    folds, tuned, everyone = [], [], []
    for k in range(rec.n_folds):
        scores = inner_scores(run, rec, k, C)
        for s in scores:
            s["label"] = spec.candidates[s["candidate"]].label
        c = choose(scores)
        outer = [_outer(run, rec, k, i) for i in range(C)]
        everyone += outer
        pick = outer[c].assign(model=spec.name)
        if repeated and REPEAT_COLUMN in pick and pick[REPEAT_COLUMN].isna().all() and any(
                r > 1 for r in rec.tuning["repeats"]):
            # a deterministic recipe chosen where others are repeated: the same predictions stand for every
            # repeat, so that the tuned model is one repeated model (its ensemble is these predictions)
            pick = pd.concat([pick.assign(**{REPEAT_COLUMN: r}) for r in range(rec.config.repeats)],
                             ignore_index=True)
            pick[REPEAT_COLUMN] = pick[REPEAT_COLUMN].astype("Int64")
        tuned.append(pick)
        folds.append(dict(fold=k, held_out=list(tplan["folds"][k]["held_out"]), n_inner_folds=int(rec.tuning["inner"][k]),
                          scores=scores, chosen=c, chosen_label=spec.candidates[c].label))
    stability = choice_stability([f["chosen_label"] for f in folds])
    data = dict(run_key=rec.key, tuning_plan_hash=tplan["hash"], name=spec.name,
                candidates=[dict(index=i, label=cand.label, **cand.to_dict()) for i, cand in enumerate(spec.candidates)],
                inner_folds=tplan["inner_folds"], n_folds=rec.n_folds, folds=folds, stability=stability,
                rule="lowest inner MAE (scans of the inner folds' left-out training monkeys pooled); ties: first listed")
    candidates = pd.concat(everyone, ignore_index=True)
    run.write_tuning(data, candidates)
    return data, pd.concat(tuned, ignore_index=True)
