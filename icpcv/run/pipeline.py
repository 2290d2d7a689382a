"""The one flow: cohort -> fold plan -> per-fold jobs -> predictions -> analysis -> report."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd

from icpcv import cohort as cohort_mod
from icpcv.config import RunConfig
from icpcv.errors import InputError, RunDirError
from icpcv.folds import audit, make_plan
from icpcv.models import NEEDS_IOP, NEEDS_VOLUMES, check_models
from icpcv.run.fold import PRED_COLUMNS
from icpcv.run.leakage import SCAN_SPLIT_DIR, read_scan_split_audit
from icpcv.run.progress import Progress
from icpcv.run.rundir import (RunLock, checkpoint_epoch, environment, fold_checkpoints, fold_complete, fold_dir,
                              read_run_record, run_key, write_run_record)
from icpcv.util import atomic_write_json, atomic_write_text, read_json


def default_run_name(cfg: RunConfig) -> str:
    if cfg.synthetic:
        stem = f"synthetic-{cfg.phantom}-signal{cfg.signal:g}"
    else:
        stem = Path(cfg.manifest).stem
    if cfg.split != "subjects":
        stem += f"-split{cfg.split}"
    return f"{stem}-{cfg.hash[:8]}"


def prepare(cfg: RunConfig, run_dir: Path, *, fresh: bool = False, progress: Progress | None = None) -> dict:
    """Create or re-open a run directory: config, environment, cohort, quality table, fold plan, audit.

    An existing run directory with a different config is refused (with what changed) unless
    ``fresh``; a changed data set or fold plan is refused likewise, before anything in it is
    rewritten. ``fresh`` cancels Slurm tasks an earlier run left behind, then empties the folder.
    """
    run_dir = Path(run_dir)
    check_models(cfg.models)
    old = None
    if (run_dir / "run.json").exists() or (run_dir / "folds").exists():
        if fresh:
            from icpcv.run.slurm import cancel_recorded

            cancel_recorded(run_dir, progress)
            for child in run_dir.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif not (run_dir / "run.json").exists():
            raise RunDirError(f"{run_dir}: holds fold results but no run.json, so they cannot be checked against "
                              "this run; use --fresh to discard them, or another --out")
        else:
            old = read_run_record(run_dir)
            changed = cfg.diff(RunConfig.from_dict(old["config"]))
            if changed:
                raise RunDirError(f"{run_dir} holds a run with another configuration ({'; '.join(changed)}); "
                                  "use another --out, or --fresh to discard it")
    need_iop = any(NEEDS_IOP[m] for m in cfg.models)
    need_volumes = any(NEEDS_VOLUMES[m] for m in cfg.models)
    coh, quality, data_hash = cohort_mod.materialise(cfg, run_dir, need_iop=need_iop, need_volumes=need_volumes,
                                                     expect_hash=old["data_hash"] if old else None,
                                                     progress=progress)
    if cfg.reference not in cfg.models and progress:
        progress.message(f"note: reference model {cfg.reference} is not among --models; no paired comparisons")
    plan = make_plan(coh.scans, n_folds=cfg.folds, split=cfg.split, val_fraction=cfg.val_fraction, seed=cfg.seed)
    plan_dict = plan.to_dict()
    if old is not None and old["plan_hash"] != plan.hash:
        raise RunDirError(f"{run_dir}: the fold plan changed (hash {old['plan_hash']} -> {plan.hash}); "
                          "use --fresh or another --out")
    leak = audit(plan, coh.scans)
    atomic_write_text(run_dir / "data_quality.csv", quality.to_csv(index=False))
    atomic_write_json(run_dir / "fold_plan.json", plan_dict)
    atomic_write_json(run_dir / "leakage_audit.json", leak)
    if cfg.split == "subjects" and not leak["passed"]:
        raise RunDirError(f"{run_dir}: leakage audit failed: {leak['summary']}; refusing to train")
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    env = environment()
    atomic_write_json(run_dir / "environment.json", env)
    session = {k: env.get(k) for k in ("time", "host", "git", "git_dirty", "torch", "gpu", "slurm_job_id")}
    record = dict(config=cfg.to_dict(), config_hash=cfg.hash, plan_hash=plan.hash, data_hash=data_hash,
                  key=run_key(cfg.hash, plan.hash, data_hash), n_folds=plan.n_folds,
                  created=(old or {}).get("created") or env["time"],
                  sessions=((old or {}).get("sessions") or [])[-49:] + [session])
    write_run_record(run_dir, record)
    if progress:
        kept = int((quality["status"] == "kept").sum())
        progress.message(f"cohort: {kept} of {len(quality)} rows kept, {coh.scans['subject'].nunique()} subjects; "
                         f"fold plan {plan.kind} x{plan.n_folds} (hash {plan.hash}); audit: {leak['summary']}")
        for reason, what in (("volume_file_missing", "volume file(s) missing"),
                             ("volume_file_unreadable", "volume file(s) that cannot be opened"),  # issue 11
                             ("bad_volume", "unusable volume(s) skipped (--skip-bad-scans)"),
                             ("bad_volume_shape", "volume(s) of another shape skipped (--skip-bad-scans)"),
                             ("bad_volume_values", "volume(s) with implausible voxels skipped (--skip-bad-scans)")):
            rows = quality[quality["reason"] == reason]
            if len(rows):
                eg = "; ".join(f"row {r.row}: {r.detail if reason.startswith('bad_volume') else r.value}"
                               for r in rows.head(3).itertuples())
                progress.message(f"cohort: {len(rows)} {what}, recorded as dropped in data_quality.csv ({eg}"
                                 f"{'; ...' if len(rows) > 3 else ''}); fix them and rerun with --fresh to use them")
    return record


def gather(run_dir: Path) -> pd.DataFrame:
    """Collect the folds' predictions; every fold must be complete."""
    rec = read_run_record(run_dir)
    missing = [k for k in range(rec["n_folds"]) if not fold_complete(run_dir, k, rec["key"])]
    if missing:
        raise RunDirError(f"{run_dir}: folds {missing} are not complete; rerun the same command to finish them")
    preds = pd.concat([pd.read_csv(fold_dir(run_dir, k) / "predictions.csv", dtype={"subject": str, "scan_id": str})
                       for k in range(rec["n_folds"])], ignore_index=True)[PRED_COLUMNS]
    atomic_write_text(Path(run_dir) / "predictions.csv", preds.to_csv(index=False))
    return preds


def finish(run_dir: Path, progress: Progress | None = None) -> Path:
    """Predictions -> stats.json -> index.html.

    When the run directory holds a leakage audit of this very run (``leakage.json`` written by
    ``run --split scans``), its summary goes into stats.json as ``scan_split_audit``.
    """
    from icpcv.stats import analyze, write_stats
    from icpcv.report import write_report

    run_dir = Path(run_dir)
    rec = read_run_record(run_dir)
    cfg = RunConfig.from_dict(rec["config"])
    preds = gather(run_dir)
    leak = read_json(run_dir / "leakage_audit.json")
    result = analyze(preds, reference=cfg.reference, n_boot=cfg.n_boot, seed=cfg.seed, ci_level=cfg.ci_level,
                     audit_failed=not leak["passed"])
    stats = result.to_dict()
    scan_audit = read_scan_split_audit(run_dir, rec)
    if scan_audit is not None:
        stats["scan_split_audit"] = {k: scan_audit[k] for k in ("statement", "n_folds", "ci_level", "models")}
    write_stats(stats, run_dir / "stats.json")
    report = write_report(run_dir)
    if progress:
        if cfg.split == "scans":
            progress.message(f"scan-level split (leaky, for the audit only): {stats['verdict']}")
        else:
            progress.message(f"verdict: {stats['verdict']}")
    return report


# --------------------------------------------------------------------------- leakage audit

def scan_split_config(cfg: RunConfig, n_folds: int) -> RunConfig:
    """The twin of an honest run for the leakage audit: the same models, data and settings on a
    scan-level random K-fold with as many folds as the honest plan, so that both train on a
    similar share of the scans and differ only in whether a monkey can be on both sides."""
    return replace(cfg, split="scans", folds=int(n_folds))


def write_scan_split_audit(run_dir: Path, progress: Progress | None = None) -> dict:
    """Pair the honest run's out-of-fold predictions with its scan-split twin's, model by model,
    and write ``leakage.json``: each model's MAE under both splits and the optimism with a
    monkey-level interval and sign-flip p (icpcv.run.leakage)."""
    from icpcv.run.leakage import leakage_summary

    run_dir = Path(run_dir)
    twin_dir = run_dir / SCAN_SPLIT_DIR
    rec, twin_rec = read_run_record(run_dir), read_run_record(twin_dir)
    cfg = RunConfig.from_dict(rec["config"])
    honest = pd.read_csv(run_dir / "predictions.csv", dtype={"subject": str, "scan_id": str, "model": str})
    leaky = pd.read_csv(twin_dir / "predictions.csv", dtype={"subject": str, "scan_id": str, "model": str})
    if set(honest["scan_id"]) != set(leaky["scan_id"]):
        raise RunDirError(f"{twin_dir}: the scan-split twin predicted other scans than {run_dir}; "
                          "rerun with --fresh")
    summary = leakage_summary(honest, leaky, n_boot=cfg.n_boot, seed=cfg.seed, ci_level=cfg.ci_level)
    data = dict(run_key=rec["key"], scan_split_dir=SCAN_SPLIT_DIR, scan_split_run_key=twin_rec["key"],
                scan_split_plan_hash=twin_rec["plan_hash"], n_folds=twin_rec["n_folds"], **summary)
    atomic_write_json(run_dir / "leakage.json", data)
    if progress:
        progress.message(f"leakage audit: {summary['statement']}")
    return data


def _prepare_and_execute(cfg: RunConfig, run_dir: Path, *, device, executor, workers, fresh, progress, slurm,
                         threads) -> dict:
    from icpcv.run.executors import execute

    rec = prepare(cfg, run_dir, fresh=fresh, progress=progress)
    n = rec["n_folds"]
    todo = [k for k in range(n) if not fold_complete(run_dir, k, rec["key"])]
    if len(todo) < n:
        progress.message(f"resuming: {n - len(todo)} of {n} folds already complete "
                         f"({', '.join(str(k + 1) for k in range(n) if k not in todo)}); they are not rerun")
    for k in todo:
        for ck in fold_checkpoints(run_dir, k):
            epoch = checkpoint_epoch(ck)
            progress.message(f"fold {k + 1}/{n}: will resume {ck.name.replace('_checkpoint.pt', '')} from its "
                             + (f"epoch {epoch} checkpoint" if epoch is not None else "checkpoint (unreadable)"))
    progress.set_folds(n - len(todo), n)
    execute(run_dir, todo, executor=executor, workers=workers, device=device, progress=progress, slurm=slurm,
            threads=threads)
    return rec


def run(cfg: RunConfig, run_dir: Path, *, device: str = "auto", executor: str = "local", workers: int = 1,
        fresh: bool = False, progress: Progress | None = None, slurm: dict | None = None,
        threads: int | None = None, leakage_audit: bool = False) -> Path:
    """Run everything; returns the path of the HTML report.

    Rerunning the same call after an interruption skips complete folds and resumes an
    incomplete one from its last epoch checkpoint. Failed folds raise :class:`FoldsFailed`
    (listing each with its log) after the other folds have finished.

    ``leakage_audit`` (``run --split scans``): after the honest run, run its scan-level twin
    (:func:`scan_split_config`) in ``run_dir/scan_split`` with the same executor, and write
    ``leakage.json``; the honest run's stats.json and report then set the two side by side.
    An honest run made earlier in ``run_dir`` is reused, not retrained.
    """
    run_dir = Path(run_dir)
    progress = progress or Progress("quiet")
    opts = dict(device=device, executor=executor, workers=workers, fresh=fresh, progress=progress, slurm=slurm,
                threads=threads)
    if leakage_audit and cfg.split != "subjects":
        raise InputError("the leakage audit sets a scan-level split beside an honest one; its main run must split "
                         f"by subjects (got split={cfg.split!r})")
    with RunLock(run_dir):
        rec = _prepare_and_execute(cfg, run_dir, **opts)
        if not leakage_audit:
            return finish(run_dir, progress)
        twin_dir = run_dir / SCAN_SPLIT_DIR
        progress.message(f"leakage audit: the same models on a scan-level random {rec['n_folds']}-fold split "
                         f"(monkeys on both sides, on purpose) in {twin_dir}")
        try:
            gather(run_dir)
            with RunLock(twin_dir):
                _prepare_and_execute(scan_split_config(cfg, rec["n_folds"]), twin_dir, **opts)
                finish(twin_dir, progress)
            write_scan_split_audit(run_dir, progress)
        except Exception:
            try:  # the honest run is complete and stands on its own: analyse and report it anyway
                finish(run_dir, progress)
            except Exception as exc:
                progress.message(f"the honest run's report failed too: {exc}")
            raise
        return finish(run_dir, progress)
