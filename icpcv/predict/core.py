"""``icpcv predict``: a new monkey's ICP from its scans, by the ensemble of a run's fold models,
with an interval that holds over monkeys (docs/prediction.md).

The new table is read and checked by the code that reads a run's (:func:`icpcv.cohort.materialise`:
the same reasons in ``data_quality.csv``; ICP may be missing), its volumes resampled to the run's
model shape as the run did, and each compared with the run's ``preprocessing.json`` (shape and
voxel scale). Each model predicts every scan with all of its fold (and repeat) models; the
prediction is their mean (nnU-Net's ensemble of its cross-validation folds), the spread their
standard deviation. The interval is the hierarchical CV+ of :mod:`icpcv.stats.intervals` on the
run's out-of-fold residuals; a second table gives each new monkey's mean ICP over its scans.

Everything is built in a staging folder inside ``--out`` and moved into place at the end,
``prediction.json`` last: a failed prediction leaves nothing that looks complete.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv import __version__
from icpcv import cohort as cohort_mod
from icpcv.cohort import ScanSet, VolumeStore
from icpcv.cohort import volumes as volume_io
from icpcv.cohort.phantom import new_subjects
from icpcv.cohort.preprocessing import scan_problem
from icpcv.errors import InputError, RunDirError
from icpcv.models import make_model
from icpcv.predict.kept import KeptRun
from icpcv.predict.page import render_page
from icpcv.rundir import CohortDir, RunDir
from icpcv.stats.intervals import METHOD, check_level, cv_plus_interval, monkey_mean_scores
from icpcv.util import atomic_write_json, atomic_write_text, file_sha256
from icpcv.writable import check_output_dir

#: the columns of ``predictions.csv`` written by ``icpcv predict``
PREDICT_COLUMNS = ["scan_id", "subject", "model", "prediction", "low", "high", "level", "fold_sd", "fold_min",
                   "fold_max", "n_fold_models", "iop", "icp"]
SUBJECT_COLUMNS = ["subject", "model", "n_scans", "prediction", "low", "high", "level", "icp_mean"]
FILES = dict(predictions="predictions.csv", subjects="subjects.csv", quality="data_quality.csv",
             meta="prediction.json", page="index.html", cohort="cohort", new_subjects="new_subjects")


@dataclass
class PredictConfig:
    run_dir: str
    out: str
    manifest: str | None = None
    scans_dir: str | None = None
    models: tuple[str, ...] | None = None  # None: every model of the run
    level: float = 0.9
    skip_bad_scans: bool = False
    new_subjects: int = 0  # > 0: make this many new phantom monkeys (a phantom run only) and predict them
    new_seed: int = 0
    device: str = "cpu"


#: the acquisition columns a lab's table gives, written for new monkeys of a realistic-acquisition run (the
#: reader derives the session and its minutes from acquired_at)
NEW_SUBJECT_ACQUISITION = ("fov_x_mm", "fov_y_mm", "depth_mm", "eye", "acquired_at", "protocol", "device")


def write_new_subjects(kept: KeptRun, n: int, seed: int, folder: Path) -> Path:
    """New phantom monkeys of the run's population as a scan table (``scans.csv``) and ``.npy`` volumes."""
    cfg = kept.record.config
    if not cfg.synthetic:
        raise InputError(f"--new-subjects: {kept.run.path} was trained on a scan table, not the phantom; give the new "
                         "monkeys' scans with --manifest")
    vol_dir = folder / "volumes"
    vol_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(kept.preprocessing["shape"]) if kept.preprocessing and kept.preprocessing.get("volumes") else None
    realistic = cfg.acquisition == "realistic"
    # scanned as the run's monkeys were: the realistic acquisition (cut and flipped as the run's volumes), the confound
    transform = cohort_mod.phantom_transform(cfg, shape or cohort_mod.volume_shape(cfg)) if realistic else None
    scans, _, truth = new_subjects(cfg.phantom, n, signal=cfg.signal, data_seed=cfg.data_seed, seed=seed, shape=shape,
                                   out=vol_dir, acquisition=cfg.acquisition, confound=cfg.confound, transform=transform)
    columns = ["scan_id", "subject", "iop", "icp"] + [c for c in NEW_SUBJECT_ACQUISITION if c in scans.columns]
    table = scans[columns].assign(path=[f"volumes/{x}.npy" for x in scans["scan_id"]])
    atomic_write_json(folder / "truth.json", {k: v for k, v in truth.items() if k != "scans"})
    path = folder / "scans.csv"
    atomic_write_text(path, table.to_csv(index=False))
    return path


def _check_preprocessing(kept: KeptRun, coh, quality: pd.DataFrame, skip: bool):
    """Scans prepared otherwise than the run's volumes: an InputError naming them, or (``skip``) dropped rows."""
    prep = kept.preprocessing
    store = VolumeStore(coh)
    bad = {}
    for rec in coh.scans.itertuples():
        raw = volume_io.read_volume(rec.path)
        why = scan_problem(prep, raw.shape, store.get([rec.scan_id])[0])
        if why:
            bad[str(rec.scan_id)] = (why[0], f"{rec.path}: {why[1]}", int(rec.row))
    if not bad:
        return coh, quality
    if not skip:
        listed = "; ".join(f"{msg} (table row {row}, scan {x})" for x, (_, msg, row) in list(bad.items())[:3])
        raise InputError(f"{len(bad)} volume(s) not prepared like the run's ({kept.run.path}/preprocessing.json): "
                         f"{listed}{'; ...' if len(bad) > 3 else ''}. Give the volumes as the run read them, or "
                         "rerun with --skip-bad-scans to record these rows as dropped")
    quality = quality.copy()
    for x, (code, msg, _) in bad.items():
        i = quality.index[(quality["scan_id"].astype(str) == x) & (quality["status"] == "kept")]
        quality.loc[i, ["status", "reason", "column", "value", "all_reasons", "detail"]] = \
            ["dropped", code, "path", str(coh.scans.loc[coh.scans["scan_id"].astype(str) == x, "path"].iloc[0]),
             code, msg]
    coh.scans = coh.scans[~coh.scans["scan_id"].astype(str).isin(bad)].reset_index(drop=True)
    if coh.scans.empty:
        raise InputError(f"no scan is left after dropping {len(bad)} prepared otherwise than the run's volumes")
    return coh, quality


def ensemble_predict(models, scans: ScanSet) -> np.ndarray:
    """Every kept model's predictions of ``scans``: ``(n_models, n_scans)``."""
    return np.stack([np.asarray(m.model.predict(scans), float) for m in models])


def predict_scans(kept: KeptRun, name: str, scans: ScanSet, level: float, device: str = "cpu"):
    """One model's ensemble prediction, spread and hierarchical CV+ interval per scan, and per new monkey
    the interval of its mean ICP. Returns ``(scan rows, subject rows)`` as DataFrames."""
    models = kept.load(name, device)
    preds = ensemble_predict(models, scans)
    folds = np.array([m.unit.fold for m in models])
    n_folds = kept.record.n_folds
    per_fold = np.stack([preds[folds == k].mean(axis=0) for k in range(n_folds)])  # (K, n): mu_{-k}(x)
    oof = kept.out_of_fold()
    oof = oof[oof["model"] == name]
    oof = oof[np.isfinite(oof["y_true"]) & np.isfinite(oof["y_pred"])]
    resid = (oof["y_true"] - oof["y_pred"]).to_numpy(float)
    groups = oof["subject"].astype(str).to_numpy()
    fold_of = oof["fold"].to_numpy(int)
    low, high = cv_plus_interval(per_fold[fold_of].T, np.abs(resid), groups, level)
    frame = scans.frame
    rows = pd.DataFrame(dict(scan_id=frame["scan_id"].astype(str).to_numpy(), subject=frame["subject"].astype(str)
                             .to_numpy(), model=name, prediction=preds.mean(axis=0), low=low, high=high, level=level,
                             fold_sd=preds.std(axis=0, ddof=1) if len(preds) > 1 else 0.0,
                             fold_min=preds.min(axis=0), fold_max=preds.max(axis=0), n_fold_models=len(preds),
                             iop=frame["iop"].to_numpy(float), icp=frame["icp"].to_numpy(float)))[PREDICT_COLUMNS]
    # a new monkey's mean ICP over its scans: one score per run monkey, its mean signed residual
    means = monkey_mean_scores(resid, groups)
    monkey_fold = pd.Series(fold_of, index=groups).groupby(level=0).first().reindex(means.index).to_numpy(int)
    subj_rows = []
    for subject, idx in frame.reset_index(drop=True).groupby(frame["subject"].astype(str).to_numpy(),
                                                               sort=False).groups.items():
        idx = np.asarray(idx)
        centre = per_fold[:, idx].mean(axis=1)  # mu_{-k}(the monkey's mean)
        lo, hi = cv_plus_interval(centre[monkey_fold][None, :], np.abs(means.to_numpy()), means.index, level)
        icp = frame["icp"].to_numpy(float)[idx]
        subj_rows.append(dict(subject=subject, model=name, n_scans=len(idx), prediction=float(preds[:, idx].mean()),
                              low=float(lo[0]), high=float(hi[0]), level=level,
                              icp_mean=float(icp.mean()) if np.isfinite(icp).all() else np.nan))
    return rows, pd.DataFrame(subj_rows, columns=SUBJECT_COLUMNS)


def summarise(rows: pd.DataFrame, subjects: pd.DataFrame) -> dict:
    """Per model: scans, monkeys, mean interval width; with ICP, MAE and the coverage achieved."""
    out = {}
    for name, r in rows.groupby("model", sort=False):
        s = subjects[subjects["model"] == name]
        width = (r["high"] - r["low"]).to_numpy(float)
        info = dict(n_scans=int(len(r)), n_subjects=int(r["subject"].nunique()),
                    mean_width=float(np.mean(width)) if np.isfinite(width).all() else None,
                    mean_fold_sd=float(r["fold_sd"].mean()))
        lab = r[np.isfinite(r["icp"])]
        if len(lab):
            info.update(n_labelled=int(len(lab)), mae=float(np.mean(np.abs(lab["prediction"] - lab["icp"]))),
                        coverage=float(np.mean((lab["low"] <= lab["icp"]) & (lab["icp"] <= lab["high"]))))
            sl = s[np.isfinite(s["icp_mean"])]
            if len(sl):
                info.update(coverage_subject_mean=float(np.mean((sl["low"] <= sl["icp_mean"]) &
                                                                (sl["icp_mean"] <= sl["high"]))),
                            mae_subject_mean=float(np.mean(np.abs(sl["prediction"] - sl["icp_mean"]))))
        out[str(name)] = info
    return out


def _check_out(out: Path, run: RunDir) -> None:
    if out.resolve() == run.path.resolve() or run.path.resolve() in out.resolve().parents:
        raise InputError(f"--out {out}: inside the run directory {run.path}; give a folder of its own")
    if RunDir(out).kind is not None:
        raise InputError(f"--out {out}: holds a run, comparison or analysis; give a folder of its own")


def predict(cfg: PredictConfig, progress=None) -> dict:
    """Run ``icpcv predict``; returns ``prediction.json``'s content."""
    try:
        level = check_level(cfg.level)
    except ValueError as exc:
        raise InputError(f"--level: {exc}") from None
    if bool(cfg.manifest) == bool(cfg.new_subjects):
        raise InputError("give the new scans with --manifest TABLE, or (a phantom run) --new-subjects N; one of them")
    kept = KeptRun(cfg.run_dir)
    names = kept.check_models(cfg.models)
    makers = [make_model(n) for n in names]
    has_volumes = bool(kept.preprocessing and kept.preprocessing.get("volumes"))
    # image_stats reads each volume's intensity statistics: from the new volumes when the run had volumes
    need_volumes = any(m.needs_volumes or (m.needs_volume_stats and has_volumes) for m in makers)
    need_iop = any(m.needs_iop for m in makers)
    if need_volumes and not (kept.preprocessing and kept.preprocessing.get("volumes")):
        raise RunDirError(f"{kept.run.path}: no preprocessing.json with the volumes' preprocessing; the run was made "
                          "before icpcv recorded it. Train it again with this version (--fresh)")
    out = Path(cfg.out)
    _check_out(out, kept.run)
    check_output_dir(out, what="prediction folder")
    out.mkdir(parents=True, exist_ok=True)
    say = progress.message if progress is not None else (lambda text: None)
    manifest = cfg.manifest
    if cfg.new_subjects:
        manifest = write_new_subjects(kept, int(cfg.new_subjects), int(cfg.new_seed), out / FILES["new_subjects"])
        say(f"predict: {cfg.new_subjects} new phantom monkey(s) (seed {cfg.new_seed}) in {manifest}")
    stage = out / f".predict-{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        run_cfg = kept.record.config
        shape = tuple(kept.preprocessing["shape"]) if need_volumes else run_cfg.shape
        ncfg = replace(run_cfg, manifest=str(manifest), scans_dir=cfg.scans_dir, shape=shape,
                       skip_bad_scans=cfg.skip_bad_scans)
        if cfg.new_subjects:  # drawn already cut and flipped as the run's volumes were: not again
            ncfg = replace(ncfg, fov_mm=None, depth_mm=None, mirror_os=False)
        coh, quality, data_hash = cohort_mod.materialise(ncfg, CohortDir(stage / FILES["cohort"]), need_iop=need_iop,
                                                         need_volumes=need_volumes, need_icp=False, progress=progress)
        if need_volumes:
            coh, quality = _check_preprocessing(kept, coh, quality, cfg.skip_bad_scans)
        warnings = []
        same = sorted(set(coh.scans["subject"].astype(str)) & kept.training_subjects())
        if same:
            warnings.append(f"subject(s) {', '.join(same[:10])}{', ...' if len(same) > 10 else ''} have the name of a "
                            "monkey the run trained on: if they are that monkey, they are not a new monkey and the "
                            "interval's guarantee (for a monkey none of the models saw) does not hold for them")
            print(f"icpcv: warning: {warnings[-1]}", file=sys.stderr)
        dropped = int((quality["status"] == "dropped").sum())
        if dropped:
            warnings.append(f"{dropped} row(s) of the table were dropped; data_quality.csv says why")
        scans = ScanSet(coh.scans.reset_index(drop=True), VolumeStore(coh).get if coh.has_volumes else None)
        say(f"predict: {len(scans)} scan(s) of {coh.scans['subject'].nunique()} monkey(s); models {', '.join(names)}")
        rows, subj = [], []
        for name in names:
            r, s = predict_scans(kept, name, scans, level, cfg.device)
            rows.append(r)
            subj.append(s)
            say(f"predict: {name}: {r['n_fold_models'].iloc[0]} fold model(s)")
        rows = pd.concat(rows, ignore_index=True)
        subj = pd.concat(subj, ignore_index=True)
        meta = dict(icpcv=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    run=str(kept.run.path.resolve()), run_key=kept.record.key, manifest=str(manifest),
                    manifest_sha256=file_sha256(manifest), data_hash=data_hash, level=level, models=names,
                    method=METHOD, n_scans=int(len(scans)), n_subjects=int(coh.scans["subject"].nunique()),
                    n_run_subjects=len(kept.training_subjects()), warnings=warnings,
                    summary=summarise(rows, subj))
        atomic_write_text(stage / FILES["predictions"], rows.to_csv(index=False))
        atomic_write_text(stage / FILES["subjects"], subj.to_csv(index=False))
        atomic_write_text(stage / FILES["quality"], quality.to_csv(index=False))
        atomic_write_text(stage / FILES["page"], render_page(meta, rows, subj))
        # into place; prediction.json last (a folder without it is not a finished prediction)
        (out / FILES["meta"]).unlink(missing_ok=True)
        final_cohort = out / FILES["cohort"]
        if final_cohort.exists():
            shutil.rmtree(final_cohort)
        os.replace(stage / FILES["cohort"], final_cohort)
        for key in ("predictions", "subjects", "quality", "page"):
            os.replace(stage / FILES[key], out / FILES[key])
        atomic_write_json(out / FILES["meta"], meta)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta
