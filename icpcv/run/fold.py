"""One fold's job: train every model on the fold's training monkeys, predict the held-out ones.

Reads everything from the run directory, so any executor (local, processes, Slurm) can run it.
Baselines are fitted on all training-side scans (training + inner-validation monkeys); CNNs fit
on the training monkeys and early-stop on the inner-validation monkeys. The held-out scans are
touched once, for prediction, after fitting.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv import cohort as cohort_mod
from icpcv.config import RunConfig
from icpcv.folds import FoldPlan
from icpcv.models import is_cnn, make_baseline, NEEDS_VOLUMES
from icpcv.run.rundir import fold_complete, fold_dir, read_run_record
from icpcv.util import atomic_write_json, atomic_write_text, read_json

PRED_COLUMNS = ["fold", "subject", "scan_id", "model", "y_true", "y_pred", "iop"]


def _train_cnn(name, cfg: RunConfig, fold, frame_of, store, device, ckpt: Path, progress, label):
    import torch

    from icpcv.models import is_resnet, make_cnn
    from icpcv.train.augment import AugmentConfig
    from icpcv.train.datapath import load_compact
    from icpcv.train.loop import TrainConfig, fit, predict

    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       patience=cfg.patience, augment=cfg.augment, seed=cfg.seed * 1000 + fold.index,
                       optimizer=cfg.optimizer, precision=cfg.precision,
                       aug=AugmentConfig.light() if name == "cnn" else AugmentConfig())
    torch.manual_seed(tcfg.seed)
    model = make_cnn(name, tuple(store.cohort.shape))
    warm = None
    if cfg.pretrained and is_resnet(name):
        from icpcv.models.pretrained import load_pretrained

        warm = load_pretrained(model, cfg.pretrained)  # InputError (naming the file) below 90% of the backbone
        if progress:
            progress.message(f"{label} {name}: {warm.summary()}")

    def part(ids):
        f = frame_of(ids)
        return load_compact(store.get, list(ids)), f["iop"].to_numpy(float), f["icp"].to_numpy(float)

    def on_epoch(row):
        if progress:
            progress.update(f"{label} {name} epoch {row['epoch']}/{cfg.epochs} train {row['train_loss']:.3f} "
                            f"val {row['val_loss']:.3f} (best {row['best_epoch']})")

    def log(line):
        if progress:
            progress.message(f"{label} {name}: {line}")

    data_path: dict = {}
    model, std, history = fit(model, part(fold.train_scans), part(fold.val_scans), tcfg, device,
                              checkpoint=ckpt, on_epoch=on_epoch, log=log, details=data_path)
    test = frame_of(fold.test_scans)
    y_pred = predict(model, load_compact(store.get, list(fold.test_scans)), test["iop"].to_numpy(float), std, device,
                     precision=cfg.precision)
    best = next(h["epoch"] for h in history if h["best"])
    info = dict(name=name, best_epoch=best, epochs_run=history[-1]["epoch"], device=str(device),
                parameters=int(sum(p.numel() for p in model.parameters())), data_path=data_path)
    if warm is not None:
        info["warm_start"] = warm.to_dict()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, fold_dir_tmp(ckpt, name))
    return y_pred, info, pd.DataFrame(history).assign(model=name)


def fold_dir_tmp(ckpt: Path, name: str) -> Path:
    return ckpt.parent / f"{name}_weights.pt"


def run_fold(run_dir, k: int, *, device: str = "auto", progress=None) -> dict:
    """Run fold ``k`` of the run in ``run_dir`` unless it is already complete; returns its record."""
    from icpcv.train.loop import pick_device

    run_dir = Path(run_dir)
    rec = read_run_record(run_dir)
    key = rec["key"]
    fdir = fold_dir(run_dir, k)
    if fold_complete(run_dir, k, key):
        return read_json(fdir / "record.json")
    cfg = RunConfig.from_dict(rec["config"])
    plan = FoldPlan.from_dict(read_json(run_dir / "fold_plan.json"))
    fold = plan.folds[k]
    coh = cohort_mod.load(run_dir)
    scans = coh.scans.set_index("scan_id", drop=False)

    def frame_of(ids):
        return scans.loc[list(ids)]

    store = cohort_mod.VolumeStore(coh) if coh.has_volumes else None
    fdir.mkdir(parents=True, exist_ok=True)
    label = f"fold {k + 1}/{plan.n_folds} (held out {', '.join(fold.held_out[:3])}{'...' if len(fold.held_out) > 3 else ''})"
    t_fold = time.perf_counter()
    test = frame_of(fold.test_scans)
    fit_ids = fold.train_scans + fold.val_scans
    preds, infos, curves = [], {}, []
    dev = pick_device(device)
    for name in cfg.models:
        t0 = time.perf_counter()
        if is_cnn(name):
            y_pred, info, curve = _train_cnn(name, cfg, fold, frame_of, store, dev, fdir / f"{name}_checkpoint.pt",
                                             progress, label)
            curves.append(curve)
        else:
            model = make_baseline(name)
            vols = store.get(list(fit_ids)) if NEEDS_VOLUMES[name] else None
            model.fit(frame_of(fit_ids), vols)
            y_pred = model.predict(test, store.get(list(fold.test_scans)) if NEEDS_VOLUMES[name] else None)
            info = model.describe()
        info["seconds"] = time.perf_counter() - t0
        infos[name] = info
        preds.append(pd.DataFrame(dict(fold=k, subject=test["subject"].to_numpy(), scan_id=test["scan_id"].to_numpy(),
                                       model=name, y_true=test["icp"].to_numpy(float), y_pred=np.asarray(y_pred, float),
                                       iop=test["iop"].to_numpy(float))))
    predictions = pd.concat(preds, ignore_index=True)[PRED_COLUMNS]
    if not np.isfinite(predictions["y_pred"]).all():
        bad = predictions.loc[~np.isfinite(predictions["y_pred"]), "model"].unique()
        raise RuntimeError(f"fold {k}: model(s) {', '.join(bad)} produced non-finite predictions")
    atomic_write_text(fdir / "predictions.csv", predictions.to_csv(index=False))
    if curves:
        atomic_write_text(fdir / "learning_curve.csv", pd.concat(curves, ignore_index=True).to_csv(index=False))
    record = dict(fold=k, key=key, status="complete", held_out=list(fold.held_out), inner_val=list(fold.inner_val),
                  n_train=len(fold.train_scans), n_val=len(fold.val_scans), n_test=len(fold.test_scans),
                  models=infos, seconds=time.perf_counter() - t_fold)
    atomic_write_json(fdir / "record.json", record)  # written last: the fold is complete only now
    for name in cfg.models:
        ck = fdir / f"{name}_checkpoint.pt"
        if ck.exists():
            ck.unlink()
    if progress:
        progress.message(f"{label} done in {record['seconds']:.1f} s: " + ", ".join(
            f"{m} MAE {np.mean(np.abs(g.y_pred - g.y_true)):.2f}" for m, g in predictions.groupby("model", sort=False)))
    return record
