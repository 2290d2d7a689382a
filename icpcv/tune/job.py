"""One unit of ``run --tune``: a candidate recipe trained once, on an inner fold or on the outer fold.

* inner unit (``Unit(k, 0, c, j)``): candidate c trained on inner fold j of outer fold k (its inner
  training monkeys, early-stopping on its inner-validation monkeys), predicting the inner fold's
  left-out training monkeys. Only the outer fold's training monkeys are read.
* outer fit (``Unit(k, r, c)``): candidate c trained on the outer fold's training side exactly as
  a plain run of that recipe would be (same scans, same seed for repeat r), predicting the held-out
  monkey. The chosen candidate's outer fit is the tuned model's refit; every candidate's is its
  plain leave-one-monkey-out result, which the optimism audit sets beside the nested one.

Seeds: a candidate's base seed is its ``seed`` setting, else ``--seed``. Its outer fit uses the
plain run's training seed for that base (``training_seed(base, k, r)``, given by the caller); its
inner fits use ``SeedSequence((base, k, j, 21))``. A ``subsample`` draws its monkeys from
``default_rng((base, k, j + 1))`` (j = -1 for the outer fit), so recipes differing only in their
seed differ in these draws and nowhere else.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch

from icpcv import cohort as cohort_mod
from icpcv.cohort import ScanSet
from icpcv.folds import FoldPlan
from icpcv.models import CNNS, FitContext, NetworkModel, make_model
from icpcv.models.baselines import RidgeScan
from icpcv.rundir import PREDICTION_COLUMNS, REPEAT_COLUMN, FoldDir, RunDir, RunRecord
from icpcv.tune.spec import NETWORK_SETTINGS, Candidate, TuneSpec

#: the training loop's settings a network candidate may replace
TRAIN_KEYS = tuple(k for k in NETWORK_SETTINGS if k != "pretrained")


def make_candidate(cand: Candidate, context: FitContext):
    """A fresh, unfitted model for a candidate recipe."""
    opts = cand.options
    if cand.model in CNNS:
        train = replace(context.train, **{k: opts[k] for k in TRAIN_KEYS if k in opts})
        pre = opts.get("pretrained", context.pretrained)
        return NetworkModel(cand.model, replace(context, train=train, pretrained=None if pre == "none" else pre),
                            width=opts.get("width"))
    if cand.model == "ridge_scan":
        return RidgeScan(**{k: opts[k] for k in ("alpha", "n_components") if k in opts})
    return make_model(cand.model)


def inner_training_seed(base: int, k: int, j: int) -> int:
    return int(np.random.SeedSequence([int(base), int(k), int(j), 21]).generate_state(1)[0])


def subsample(train: ScanSet, share: float, base: int, k: int, j: int) -> tuple[ScanSet, list[str]]:
    """``share`` of the training monkeys (at least one), drawn from ``(base, k, j + 1)``."""
    subject = train.frame["subject"].to_numpy().astype(str)  # numpy strings: far quicker than a pandas str column
    monkeys = sorted(set(subject.tolist()))
    n = max(1, int(round(share * len(monkeys))))
    keep = sorted(np.random.default_rng([int(base), int(k), int(j) + 1]).choice(monkeys, n, replace=False).tolist())
    return ScanSet(train.frame[np.isin(subject, keep)], train.get_volumes), keep


def fit_candidate(cand: Candidate, train: ScanSet, val: ScanSet, test: ScanSet, context: FitContext, *, base: int,
                  k: int, j: int):
    """Fit candidate ``cand`` (its ``subsample`` of ``train`` drawn from ``(base, k, j + 1)``) and predict ``test``;
    returns ``(model, predictions, the scans fitted, the monkeys kept or None)``. The one fit of every tuning
    unit, and of :func:`icpcv.tune.nested.nested_in_memory`."""
    fitted_monkeys = None
    if cand.options.get("subsample", 1.0) < 1.0:
        train, fitted_monkeys = subsample(train, cand.options["subsample"], base, k, j)
    model = make_candidate(cand, context).fit(train, val)
    y_pred = np.asarray(model.predict(test), float)
    if not np.isfinite(y_pred).all():
        raise RuntimeError(f"{context.label or cand.label}: non-finite predictions")
    return model, y_pred, train, fitted_monkeys


def run_tuning_unit(run: RunDir, fold: FoldDir, rec: RunRecord, device, progress, *, outer_seed) -> dict:
    """Train, predict and record one tuning unit (see the module); ``outer_seed(base, k, repeat)`` is the plain
    run's training seed. Returns the unit's record, written last (the unit is complete only then)."""
    cfg = rec.config
    k, r, c, j = fold.k, fold.repeat, fold.candidate, fold.inner
    tplan = run.read_tuning_plan()
    spec = TuneSpec.from_dict(tplan["spec"])
    cand = spec.candidates[c]
    base = int(cand.options.get("seed", cfg.seed))
    coh = cohort_mod.load(run.cohort)
    scans = coh.scans.set_index("scan_id", drop=False)
    get_volumes = cohort_mod.VolumeStore(coh).get if coh.has_volumes else None

    def scan_set(ids) -> ScanSet:
        return ScanSet(scans.loc[list(ids)], get_volumes)

    if j >= 0:
        part = FoldPlan.from_dict(tplan["folds"][k]["inner"]).folds[j]
        seed = inner_training_seed(base, k, j)
    else:
        part = FoldPlan.from_dict(run.read_plan_dict()).folds[k]
        seed = outer_seed(base, k, r)
    train, val, test = scan_set(part.train_scans), scan_set(part.val_scans), scan_set(part.test_scans)
    label = f"{fold.unit.label(cfg.repeats, rec.n_folds)} [{cand.label}]"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    context = FitContext(train=cfg.train, seed=seed, shape=coh.shape, device=device,
                         checkpoint=fold.checkpoint(cand.model), weights=fold.weights(cand.model) if j < 0 else None,
                         pretrained=cfg.pretrained, shortcut_grad=cfg.shortcut_grad, label=label, progress=progress)
    model, y_pred, train, fitted_monkeys = fit_candidate(cand, train, val, test, context, base=base, k=k, j=j)
    table = pd.DataFrame(dict(fold=k, subject=test.frame["subject"].to_numpy(), scan_id=test.frame["scan_id"].to_numpy(),
                              model=cand.label, y_true=test.icp, y_pred=y_pred, iop=test.iop))
    if cfg.repeats > 1 and j < 0:
        table[REPEAT_COLUMN] = pd.array([r if model.stochastic else pd.NA] * len(table), dtype="Int64")
    table = table[PREDICTION_COLUMNS + ([REPEAT_COLUMN] if cfg.repeats > 1 and j < 0 else [])]
    sha = fold.write_predictions(table)
    if model.learning_curve_ is not None:
        fold.write_learning_curve(model.learning_curve_)
    e = table["y_pred"] - table["y_true"]
    info = model.describe()
    record = dict(fold=k, repeat=r, candidate=c, inner=j, label=label, key=rec.key, status="complete",
                  held_out=sorted(test.frame["subject"].astype(str).unique()), inner_val=list(part.inner_val),
                  fitted_monkeys=fitted_monkeys, n_train=len(train), n_val=len(val), n_test=len(test),
                  training_seed=seed, models={cand.label: info},
                  metrics={cand.label: dict(mae=float(np.mean(np.abs(e))), rmse=float(np.sqrt(np.mean(e ** 2))),
                                            n=int(len(e)))},
                  predictions_sha256=sha, host=socket.gethostname(), pid=os.getpid(), device=str(device),
                  torch_threads=torch.get_num_threads(), slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                  started=started, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  seconds=time.perf_counter() - t0)
    fold.write_record(record)
    fold.remove_checkpoints([cand.model])
    return record
