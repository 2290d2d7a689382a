"""One fold's job: train every model on the fold's training monkeys, predict the held-out ones.

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
from icpcv.rundir import PREDICTION_COLUMNS, FoldDir, RunDir, RunRecord
from icpcv.train.loop import pick_device


def fold_label(k: int, n_folds: int, held_out) -> str:
    held_out = list(held_out)
    return f"fold {k + 1}/{n_folds} (held out {', '.join(held_out[:3])}{'...' if len(held_out) > 3 else ''})"


def fold_summary(record: dict, n_folds: int) -> str:
    """One line on a complete fold, from its record."""
    maes = ", ".join(f"{m} MAE {v['mae']:.2f}" for m, v in record.get("metrics", {}).items())
    return f"{fold_label(record['fold'], n_folds, record['held_out'])} done in {record['seconds']:.1f} s: {maes}"


def training_seed(seed: int, k: int) -> int:
    """The seed of fold ``k``'s networks: initialisation, batch order and augmentation."""
    return seed * 1000 + k


def run_fold(run_dir, k: int, *, device: str = "auto", progress=None) -> dict:
    """Run fold ``k`` of the run in ``run_dir`` unless it is already complete; returns its record.

    Holds the fold's lock while it runs. A CNN with an epoch checkpoint in the fold's folder
    resumes from it. The fold's files are written atomically, ``record.json`` last: until it is
    written (with the predictions' hash) the fold is not complete, whatever else is on disk.
    """
    run = RunDir(run_dir)
    rec = run.read_record()
    fold = run.fold(k)
    if fold.complete(rec.key):
        return fold.read_record()
    fold.path.mkdir(parents=True, exist_ok=True)
    with fold.lock():
        if fold.complete(rec.key):  # finished by another process while we waited
            return fold.read_record()
        fold.clean_stale_temps()
        fold.clear_error()
        return _run_fold(run, fold, rec, device, FoldReporter(fold, progress))


def run_job(run_dir, k: int, *, device: str = "auto", threads: int | None = None, echo: bool = False) -> dict:
    """Run fold ``k`` as a job in this process (a worker or a Slurm task); returns its record.

    Sets the torch thread count, reports to the fold's ``fold.log`` / ``status.json`` (and to
    stderr with ``echo``), and records an exception in ``error.json`` before re-raising it.
    """
    if threads:
        torch.set_num_threads(int(threads))
    parent = Progress("lines", stream=sys.stderr) if echo else None
    fold = RunDir(run_dir).fold(k)
    try:
        return run_fold(run_dir, k, device=device, progress=parent)  # run_fold adds fold.log and status.json
    except Exception as exc:  # SystemExit (submitit's requeue) and KeyboardInterrupt are not failures
        fold.write_error(exc, log=str(fold.log))
        FoldReporter(fold, parent).message(f"fold {k + 1} failed: {type(exc).__name__}: {exc}")
        raise


def _run_fold(run: RunDir, fold: FoldDir, rec: RunRecord, device: str, progress: FoldReporter) -> dict:
    k = fold.k
    cfg = rec.config
    plan = FoldPlan.from_dict(run.read_plan_dict())
    part = plan.folds[k]
    coh = cohort_mod.load(run.cohort)
    scans = coh.scans.set_index("scan_id", drop=False)
    get_volumes = cohort_mod.VolumeStore(coh).get if coh.has_volumes else None

    def scan_set(ids) -> ScanSet:
        return ScanSet(scans.loc[list(ids)], get_volumes)

    train, val, test = scan_set(part.train_scans), scan_set(part.val_scans), scan_set(part.test_scans)
    label = fold_label(k, plan.n_folds, part.held_out)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t_fold = time.perf_counter()
    dev = pick_device(device)
    progress.message(f"{label}: starting on {socket.gethostname()} (pid {os.getpid()}, device {dev}, "
                     f"{torch.get_num_threads()} torch threads)")
    preds, infos, curves = [], {}, []
    saliency = {}  # issue 14: model -> its maps file (run --saliency N)
    for name in cfg.models:
        t0 = time.perf_counter()
        context = FitContext(train=cfg.train, seed=training_seed(cfg.seed, k), shape=coh.shape, device=dev,
                             checkpoint=fold.checkpoint(name), weights=fold.weights(name),
                             pretrained=cfg.pretrained, shortcut_grad=cfg.shortcut_grad, label=label,
                             progress=progress)
        model = make_model(name, context).fit(train, val)
        y_pred = model.predict(test)
        info = model.describe()
        if model.learning_curve_ is not None:
            curves.append(model.learning_curve_)
        info["seconds"] = time.perf_counter() - t0
        infos[name] = info
        if cfg.saliency and is_network(model):  # issue 14: maps of held-out scans, written before record.json
            saliency[name] = write_fold_saliency(fold, run.cohort, name, model, test, n=cfg.saliency, seed=cfg.seed,
                                                 methods=cfg.saliency_methods)
            progress.message(f"{label} {name}: {saliency[name]['n_scans']} held-out scans mapped in "
                             f"{saliency[name]['wall_seconds']:.1f} s")
        preds.append(pd.DataFrame(dict(fold=k, subject=test.frame["subject"].to_numpy(),
                                       scan_id=test.frame["scan_id"].to_numpy(), model=name,
                                       y_true=test.icp, y_pred=np.asarray(y_pred, float), iop=test.iop)))
    predictions = pd.concat(preds, ignore_index=True)[PREDICTION_COLUMNS]
    if not np.isfinite(predictions["y_pred"]).all():
        bad = predictions.loc[~np.isfinite(predictions["y_pred"]), "model"].unique()
        raise RuntimeError(f"fold {k}: model(s) {', '.join(bad)} produced non-finite predictions")
    predictions_sha256 = fold.write_predictions(predictions)
    if curves:
        fold.write_learning_curve(pd.concat(curves, ignore_index=True))
    err = predictions["y_pred"] - predictions["y_true"]
    metrics = {m: dict(mae=float(np.mean(np.abs(e))), rmse=float(np.sqrt(np.mean(e ** 2))), n=int(len(e)))
               for m, e in err.groupby(predictions["model"], sort=False)}
    record = dict(fold=k, key=rec.key, status="complete", held_out=list(part.held_out),
                  inner_val=list(part.inner_val), n_train=len(part.train_scans), n_val=len(part.val_scans),
                  n_test=len(part.test_scans), models=infos, metrics=metrics, predictions_sha256=predictions_sha256,
                  host=socket.gethostname(), pid=os.getpid(), device=str(dev), torch_threads=torch.get_num_threads(),
                  slurm_job_id=os.environ.get("SLURM_JOB_ID"), started=started,
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  seconds=time.perf_counter() - t_fold)
    if saliency:  # issue 14: FoldDir.complete checks these files like the predictions
        record["saliency"] = saliency
    fold.write_record(record)  # written last: the fold is complete only now
    fold.remove_checkpoints(cfg.models)
    progress.message(fold_summary(record, plan.n_folds))
    return record
