"""One unit's job: train every model on the fold's training monkeys, predict the held-out ones.

A unit is a fold and a training repeat (:class:`~icpcv.rundir.Unit`). Repeat 0 fits every model
of the fold; with ``--repeats R`` repeats 1 to R-1 fit the models that depend on training
randomness (the networks) again, on the same fold plan and inner-validation monkeys, with the
seed :func:`training_seed` derives from ``(seed, fold, repeat)``.

Reads everything from the run directory, so any executor (local, processes, Slurm) can run it.
Every model is fitted with ``fit(train, val)``: the baselines fit all training-side scans
(training + inner-validation monkeys), the CNNs fit the training monkeys and early-stop on the
inner-validation monkeys. The held-out scans are touched once, for prediction, after fitting.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icpcv import cohort as cohort_mod
from icpcv.cohort import ScanSet
from icpcv.explain.fold import is_network, write_fold_saliency  # issue 14: run --saliency N
from icpcv.folds import FoldPlan
from icpcv.models import FitContext, make_model
from icpcv.progress import FoldReporter, Progress
from icpcv.rundir import PREDICTION_COLUMNS, REPEAT_COLUMN, FoldDir, RunDir, RunRecord, Unit
from icpcv.train.loop import pick_device
from icpcv.tune.job import run_tuning_unit  # issue 21: run --tune


def fold_label(k: int, n_folds: int, held_out, repeat: int = 0, n_repeats: int = 1) -> str:
    held_out = list(held_out)
    return (f"{Unit(k, repeat).label(n_repeats, n_folds)} (held out {', '.join(held_out[:3])}"
            f"{'...' if len(held_out) > 3 else ''})")


def fold_summary(record: dict, n_folds: int) -> str:
    """One line on a complete unit, from its record."""
    if "candidate" in record:  # issue 21: a tuning unit names itself
        (name, v), = record["metrics"].items()
        return f"{record['label']} done in {record['seconds']:.1f} s: MAE {v['mae']:.2f}"
    maes = ", ".join(f"{m} MAE {v['mae']:.2f}" for m, v in record.get("metrics", {}).items())
    label = fold_label(record["fold"], n_folds, record["held_out"], record.get("repeat", 0),
                       record.get("n_repeats", 1))
    return f"{label} done in {record['seconds']:.1f} s: {maes}"


def training_seed(seed: int, k: int, repeat: int = 0) -> int:
    """The seed of fold ``k``'s networks in training repeat ``repeat``: initialisation, batch order
    and augmentation. Repeat 0 keeps the seed of a run trained once (``seed * 1000 + k``); the
    other repeats draw theirs from ``numpy.random.SeedSequence((seed, k, repeat))``."""
    if repeat == 0:
        return seed * 1000 + k
    return int(np.random.SeedSequence([int(seed), int(k), int(repeat)]).generate_state(1)[0])


def run_fold(run_dir, k: int, *, repeat: int = 0, device: str = "auto", progress=None, candidate: int = -1,
             inner: int = -1) -> dict:
    """Run repeat ``repeat`` of fold ``k`` of the run in ``run_dir`` unless it is already complete;
    returns its record.

    Holds the unit's lock while it runs. A CNN with an epoch checkpoint in the unit's folder
    resumes from it. The unit's files are written atomically, ``record.json`` last: until it is
    written (with the predictions' hash) the unit is not complete, whatever else is on disk.
    """
    run = RunDir(run_dir)
    rec = run.read_record()
    if not 0 <= repeat < rec.config.repeats:
        raise ValueError(f"repeat {repeat} of a run with {rec.config.repeats} repeat(s)")
    unit = Unit(k, repeat, candidate, inner)
    if unit.tuning and unit not in run.tuning_units(rec):  # issue 21
        raise ValueError(f"{unit.label()}: not a unit of this run's --tune")
    fold = run.unit(unit)
    if fold.complete(rec.key):
        return fold.read_record()
    fold.path.mkdir(parents=True, exist_ok=True)
    with fold.lock():
        if fold.complete(rec.key):  # finished by another process while we waited
            return fold.read_record()
        fold.clean_stale_temps()
        fold.clear_error()
        if unit.tuning:  # issue 21: a candidate recipe on an inner fold, or its fit on the outer fold
            reporter = FoldReporter(fold, progress)
            record = run_tuning_unit(run, fold, rec, pick_device(device), reporter, outer_seed=training_seed)
            reporter.message(fold_summary(record, rec.n_folds))
            return record
        return _run_fold(run, fold, rec, device, FoldReporter(fold, progress))


def run_job(run_dir, k: int, *, repeat: int = 0, device: str = "auto", threads: int | None = None,
            echo: bool = False, candidate: int = -1, inner: int = -1) -> dict:
    """Run repeat ``repeat`` of fold ``k`` as a job in this process (a worker or a Slurm task);
    returns its record.

    Sets the torch thread count, reports to the unit's ``fold.log`` / ``status.json`` (and to
    stderr with ``echo``), and records an exception in ``error.json`` before re-raising it.
    """
    if threads:
        torch.set_num_threads(int(threads))
    parent = Progress("lines", stream=sys.stderr) if echo else None
    fold = RunDir(run_dir).unit(Unit(k, repeat, candidate, inner))
    try:
        return run_fold(run_dir, k, repeat=repeat, device=device, progress=parent, candidate=candidate,
                        inner=inner)  # adds fold.log, status.json
    except Exception as exc:  # SystemExit (submitit's requeue) and KeyboardInterrupt are not failures
        fold.write_error(exc, log=str(fold.log))
        FoldReporter(fold, parent).message(f"{fold.unit.label()} failed: {type(exc).__name__}: {exc}")
        raise


def _run_fold(run: RunDir, fold: FoldDir, rec: RunRecord, device: str, progress: FoldReporter) -> dict:
    k, repeat = fold.k, fold.repeat
    cfg = rec.config
    repeated = cfg.repeats > 1
    plan = FoldPlan.from_dict(run.read_plan_dict())
    part = plan.folds[k]
    coh = cohort_mod.load(run.cohort)
    scans = coh.scans.set_index("scan_id", drop=False)
    get_volumes = cohort_mod.VolumeStore(coh).get if coh.has_volumes else None

    def scan_set(ids) -> ScanSet:
        return ScanSet(scans.loc[list(ids)], get_volumes)

    train, val, test = scan_set(part.train_scans), scan_set(part.val_scans), scan_set(part.test_scans)
    label = fold_label(k, plan.n_folds, part.held_out, repeat, cfg.repeats)
    # repeat 0 fits every model; the other repeats refit only the models that training randomness changes
    models = [m for m in cfg.models if repeat == 0 or make_model(m).stochastic]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t_fold = time.perf_counter()
    dev = pick_device(device)
    progress.message(f"{label}: starting on {socket.gethostname()} (pid {os.getpid()}, device {dev}, "
                     f"{torch.get_num_threads()} torch threads)")
    preds, infos, curves = [], {}, []
    saliency = {}  # issue 14: model -> its maps file (run --saliency N)
    for name in models:
        t0 = time.perf_counter()
        context = FitContext(train=cfg.train, seed=training_seed(cfg.seed, k, repeat), shape=coh.shape, device=dev,
                             checkpoint=fold.checkpoint(name), weights=fold.weights(name),
                             pretrained=cfg.pretrained, shortcut_grad=cfg.shortcut_grad, label=label,
                             progress=progress, covariates=tuple(cfg.covariates))
        model = make_model(name, context).fit(train, val)
        y_pred = model.predict(test)
        try:  # issue 20: kept for `icpcv predict`, before record.json (a model that cannot be kept is not)
            fold.write_model_state(name, model.to_state())
        except NotImplementedError:
            pass
        info = model.describe()
        info["stochastic"] = bool(model.stochastic)  # trained again in each repeat (the report says so)
        if model.learning_curve_ is not None:
            curves.append(model.learning_curve_)
        info["seconds"] = time.perf_counter() - t0
        infos[name] = info
        if cfg.saliency and repeat == 0 and is_network(model):  # issue 14: maps of held-out scans, written before record.json
            saliency[name] = write_fold_saliency(fold, run.cohort, name, model, test, n=cfg.saliency, seed=cfg.seed,
                                                 methods=cfg.saliency_methods)
            progress.message(f"{label} {name}: {saliency[name]['n_scans']} held-out scans mapped in "
                             f"{saliency[name]['wall_seconds']:.1f} s")
        table = pd.DataFrame(dict(fold=k, subject=test.frame["subject"].to_numpy(),
                                  scan_id=test.frame["scan_id"].to_numpy(), model=name,
                                  y_true=test.icp, y_pred=np.asarray(y_pred, float), iop=test.iop))
        if repeated:  # the repeat of a network's rows; empty for a deterministic model
            table[REPEAT_COLUMN] = pd.array([repeat if model.stochastic else pd.NA] * len(table), dtype="Int64")
        preds.append(table)
    columns = PREDICTION_COLUMNS + ([REPEAT_COLUMN] if repeated else [])
    # a repeat with no network among --models (issue 21: --repeats for --tune's network candidates) predicts nothing
    predictions = (pd.concat(preds, ignore_index=True)[columns] if preds else
                   pd.DataFrame({c: pd.Series(dtype=float if c in ("y_true", "y_pred", "iop") else object)
                                 for c in columns}))
    if not np.isfinite(predictions["y_pred"]).all():
        bad = predictions.loc[~np.isfinite(predictions["y_pred"]), "model"].unique()
        raise RuntimeError(f"fold {k}: model(s) {', '.join(bad)} produced non-finite predictions")
    predictions_sha256 = fold.write_predictions(predictions)
    if curves:
        fold.write_learning_curve(pd.concat(curves, ignore_index=True))
    err = predictions["y_pred"] - predictions["y_true"]
    metrics = {m: dict(mae=float(np.mean(np.abs(e))), rmse=float(np.sqrt(np.mean(e ** 2))), n=int(len(e)))
               for m, e in err.groupby(predictions["model"], sort=False)}
    record = dict(fold=k, **(dict(repeat=repeat, n_repeats=cfg.repeats,
                                  training_seed=training_seed(cfg.seed, k, repeat)) if repeated else {}),
                  key=rec.key, status="complete", held_out=list(part.held_out),
                  inner_val=list(part.inner_val), n_train=len(part.train_scans), n_val=len(part.val_scans),
                  n_test=len(part.test_scans), models=infos, metrics=metrics, predictions_sha256=predictions_sha256,
                  host=socket.gethostname(), pid=os.getpid(), device=str(dev), torch_threads=torch.get_num_threads(),
                  slurm_job_id=os.environ.get("SLURM_JOB_ID"), started=started,
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  seconds=time.perf_counter() - t_fold)
    if saliency:  # issue 14: FoldDir.complete checks these files like the predictions
        record["saliency"] = saliency
    fold.write_record(record)  # written last: the fold is complete only now
    fold.remove_checkpoints(models)
    progress.message(fold_summary(record, plan.n_folds))
    return record
