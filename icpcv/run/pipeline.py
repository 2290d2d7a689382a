"""The one flow: cohort -> fold plan -> per-fold jobs -> predictions -> analysis -> report."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from icpcv import cohort as cohort_mod
from icpcv.config import RunConfig
from icpcv.errors import InputError, RunDirError
from icpcv.folds import FoldPlan, audit, make_plan
from icpcv.models import NEEDS_IOP, NEEDS_VOLUMES, check_models
from icpcv.run.fold import PRED_COLUMNS, run_fold
from icpcv.run.progress import Progress
from icpcv.run.rundir import (RunLock, environment, fold_complete, fold_dir, read_run_record, run_key,
                              write_run_record)
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
    ``fresh``; a changed data set or fold plan is refused likewise.
    """
    run_dir = Path(run_dir)
    check_models(cfg.models)
    old = None
    if (run_dir / "run.json").exists():
        if fresh:
            for child in run_dir.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            old = read_run_record(run_dir)
            changed = cfg.diff(RunConfig.from_dict(old["config"]))
            if changed:
                raise RunDirError(f"{run_dir} holds a run with another configuration ({'; '.join(changed)}); "
                                  "use another --out, or --fresh to discard it")
    need_iop = any(NEEDS_IOP[m] for m in cfg.models)
    need_volumes = any(NEEDS_VOLUMES[m] for m in cfg.models)
    coh, quality, data_hash = cohort_mod.materialise(cfg, run_dir, need_iop=need_iop, need_volumes=need_volumes)
    if cfg.reference not in cfg.models and progress:
        progress.message(f"note: reference model {cfg.reference} is not among --models; no paired comparisons")
    atomic_write_text(run_dir / "data_quality.csv", quality.to_csv(index=False))
    plan = make_plan(coh.scans, n_folds=cfg.folds, split=cfg.split, val_fraction=cfg.val_fraction, seed=cfg.seed)
    plan_dict = plan.to_dict()
    if old is not None:
        if old["data_hash"] != data_hash:
            raise RunDirError(f"{run_dir}: the data changed since this run started (hash {old['data_hash']} -> "
                              f"{data_hash}); use --fresh or another --out")
        if old["plan_hash"] != plan.hash:
            raise RunDirError(f"{run_dir}: the fold plan changed (hash {old['plan_hash']} -> {plan.hash})")
    leak = audit(plan, coh.scans)
    atomic_write_json(run_dir / "fold_plan.json", plan_dict)
    atomic_write_json(run_dir / "leakage_audit.json", leak)
    if cfg.split == "subjects" and not leak["passed"]:
        raise RunDirError(f"{run_dir}: leakage audit failed: {leak['summary']}; refusing to train")
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    atomic_write_json(run_dir / "environment.json", environment())
    record = dict(config=cfg.to_dict(), config_hash=cfg.hash, plan_hash=plan.hash, data_hash=data_hash,
                  key=run_key(cfg.hash, plan.hash, data_hash), n_folds=plan.n_folds,
                  created=(old or {}).get("created") or environment()["time"])
    write_run_record(run_dir, record)
    if progress:
        kept = int((quality["status"] == "kept").sum())
        progress.message(f"cohort: {kept} of {len(quality)} rows kept, {coh.scans['subject'].nunique()} subjects; "
                         f"fold plan {plan.kind} x{plan.n_folds} (hash {plan.hash}); audit: {leak['summary']}")
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
    """Predictions -> stats.json -> index.html."""
    from icpcv.stats import analyze, write_stats
    from icpcv.report import write_report

    run_dir = Path(run_dir)
    rec = read_run_record(run_dir)
    cfg = RunConfig.from_dict(rec["config"])
    preds = gather(run_dir)
    leak = read_json(run_dir / "leakage_audit.json")
    result = analyze(preds, reference=cfg.reference, n_boot=cfg.n_boot, seed=cfg.seed, ci_level=cfg.ci_level,
                     audit_failed=not leak["passed"])
    write_stats(result, run_dir / "stats.json")
    report = write_report(run_dir)
    if progress:
        progress.message(f"verdict: {result.to_dict()['verdict']}")
    return report


def run(cfg: RunConfig, run_dir: Path, *, device: str = "auto", executor: str = "local", workers: int = 1,
        fresh: bool = False, progress: Progress | None = None, slurm: dict | None = None) -> Path:
    """Run everything; returns the path of the HTML report."""
    from icpcv.run.executors import execute

    run_dir = Path(run_dir)
    progress = progress or Progress("quiet")
    with RunLock(run_dir):
        rec = prepare(cfg, run_dir, fresh=fresh, progress=progress)
        todo = [k for k in range(rec["n_folds"]) if not fold_complete(run_dir, k, rec["key"])]
        if len(todo) < rec["n_folds"]:
            progress.message(f"resuming: {rec['n_folds'] - len(todo)} of {rec['n_folds']} folds already complete")
        execute(run_dir, todo, executor=executor, workers=workers, device=device, progress=progress, slurm=slurm)
        return finish(run_dir, progress)
