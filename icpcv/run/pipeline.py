"""The one flow: cohort -> fold plan -> per-fold jobs -> predictions -> analysis -> report."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd

from icpcv import cohort as cohort_mod
from icpcv.cohort.preprocessing import describe as describe_preprocessing
from icpcv.cohort.table import read_scan_table
from icpcv.config import RunConfig
from icpcv.errors import InputError, RunDirError
from icpcv.explain.summary import write_attribution  # issue 14
from icpcv.folds import audit, make_plan
from icpcv.models import check_models, make_model
from icpcv.progress import Progress
from icpcv.report import write_report
from icpcv.run.environment import environment
from icpcv.run.executors import execute
from icpcv.run.slurm import cancel_recorded
from icpcv.rundir import FoldDir, RunDir, RunRecord, run_key
from icpcv.stats import leakage_summary, write_stats
from icpcv.stats.repeats import ensemble
from icpcv.stats.intervals import prediction_intervals
from icpcv.stats.selection import selection_optimism  # issue 21: run --tune
from icpcv.stats.study import analyze_study, primary_predictions
from icpcv.train.loop import checkpoint_epoch
from icpcv.tune.plan import make_tuning_plan, units_shape  # issue 21
from icpcv.tune.select import write_tuning  # issue 21
from icpcv.tune.spec import TuneSpec  # issue 21


def default_run_name(cfg: RunConfig) -> str:
    if cfg.synthetic:
        stem = f"synthetic-{cfg.phantom}-signal{cfg.signal:g}"
    else:
        stem = Path(cfg.manifest).stem
    if cfg.split != "subjects":
        stem += f"-split{cfg.split}"
    return f"{stem}-{cfg.hash[:8]}"


def prepare(cfg: RunConfig, run_dir: Path, *, fresh: bool = False, progress: Progress | None = None) -> RunRecord:
    """Create or re-open a run directory: config, environment, cohort, quality table, fold plan, audit.

    An existing run directory with a different config is refused (with what changed) unless
    ``fresh``; a changed data set or fold plan is refused likewise, before anything in it is
    rewritten. ``fresh`` cancels Slurm tasks an earlier run left behind, then empties the folder.
    """
    run = RunDir(run_dir)
    check_models(cfg.models)
    spec = TuneSpec.from_dict(cfg.tune) if cfg.tune else None  # issue 21: the candidates' needs count too
    models = [make_model(m) for m in list(cfg.models) + (spec.models if spec else [])]
    need_iop, need_volumes = any(m.needs_iop for m in models), any(m.needs_volumes for m in models)
    old = None
    if run.has_results():
        if fresh:
            if not cfg.synthetic:  # a table that cannot be used must not cost the run it was to replace
                read_scan_table(cfg.manifest, scans_dir=cfg.scans_dir, need_iop=need_iop, need_volumes=need_volumes)
            cancel_recorded(run.path, progress)
            for child in run.path.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif not run.run_json.exists():
            raise RunDirError(f"{run.path}: holds fold results but no run.json, so they cannot be checked against "
                              "this run; use --fresh to discard them, or another --out")
        else:
            old = run.read_record()
            changed = cfg.diff(old.config)
            if changed:
                raise RunDirError(f"{run.path} holds a run with another configuration ({'; '.join(changed)}); "
                                  "use another --out, or --fresh to discard it")
    coh, quality, data_hash = cohort_mod.materialise(cfg, run.cohort, need_iop=need_iop, need_volumes=need_volumes,
                                                     expect_hash=old.data_hash if old else None,
                                                     progress=progress)
    run.write_preprocessing(describe_preprocessing(coh))  # issue 20: what `icpcv predict` repeats for a new scan
    if cfg.reference not in cfg.models and progress:
        progress.message(f"note: reference model {cfg.reference} is not among --models; no paired comparisons")
    plan = make_plan(coh.scans, n_folds=cfg.folds, split=cfg.split, val_fraction=cfg.val_fraction, seed=cfg.seed,
                     inner_val_needed=any(m.stochastic for m in models))  # the networks early-stop on it
    if old is not None and old.plan_hash != plan.hash:
        raise RunDirError(f"{run.path}: the fold plan changed (hash {old.plan_hash} -> {plan.hash}); "
                          "use --fresh or another --out")
    leak = audit(plan, coh.scans)
    run.write_quality(quality)
    run.write_plan(plan.to_dict())
    run.write_plan_audit(leak)
    if cfg.split == "subjects" and not leak["passed"]:
        raise RunDirError(f"{run.path}: leakage audit failed: {leak['summary']}; refusing to train")
    tuning = None
    if spec is not None:  # issue 21: the inner plans, frozen before any training like the fold plan
        tplan = make_tuning_plan(coh.scans, plan, spec, inner_folds=cfg.inner_folds, val_fraction=cfg.val_fraction,
                                 seed=cfg.seed, repeats=[cfg.repeats if make_model(c.model).stochastic else 1
                                                         for c in spec.candidates])
        run.write_tuning_plan(tplan)
        tuning = units_shape(tplan)
    run.write_config(cfg)
    env = environment()
    run.write_environment(env)
    session = {k: env.get(k) for k in ("time", "host", "git", "git_dirty", "torch", "gpu", "slurm_job_id")}
    record = RunRecord(config=cfg, config_hash=cfg.hash, plan_hash=plan.hash, data_hash=data_hash,
                       key=run_key(cfg.hash, plan.hash, data_hash), n_folds=plan.n_folds,
                       created=old.created if old and old.created else env["time"],
                       sessions=(old.sessions if old else [])[-49:] + [session], tuning=tuning)
    run.write_record(record)
    if progress:
        kept = int((quality["status"] == "kept").sum())
        progress.message(f"cohort: {kept} of {len(quality)} rows kept, {coh.scans['subject'].nunique()} subjects; "
                         f"fold plan {plan.kind} x{plan.n_folds} (hash {plan.hash}); audit: {leak['summary']}")
        if tuning is not None:  # issue 21
            n_units = len(RunDir.tuning_units(record))
            progress.message(f"--tune: {len(spec.candidates)} candidates for {spec.name}, chosen in each outer fold on "
                             f"inner folds of its training monkeys ({min(tuning['inner'])}-{max(tuning['inner'])} per "
                             f"fold); {n_units} tuning units (inner trainings and outer fits)")
        for reason, what in (("volume_file_missing", "volume file(s) missing"),
                             ("volume_file_unreadable", "volume file(s) that cannot be opened"),
                             ("bad_volume", "unusable volume(s) skipped (--skip-bad-scans)"),
                             ("bad_volume_shape", "volume(s) of another shape skipped (--skip-bad-scans)"),
                             ("bad_volume_values", "volume(s) with implausible voxels skipped (--skip-bad-scans)"),
                             ("line_scan", "line scan(s) skipped: not volumes"),
                             ("fov_too_small", "volume(s) with a field of view smaller than --fov-mm/--depth-mm skipped"),
                             ("fov_unknown", "volume(s) without a known field of view skipped (--fov-mm/--depth-mm)")):
            rows = quality[(quality["reason"] == reason) & (quality["status"] == "dropped")]
            if len(rows):
                geo = reason in ("line_scan", "fov_too_small", "fov_unknown")
                eg = "; ".join(f"row {r.row}: {r.detail if reason.startswith('bad_volume') else r.value}"
                               for r in rows.head(3).itertuples())
                progress.message(f"cohort: {len(rows)} {what}, recorded as dropped in data_quality.csv ({eg}"
                                 f"{'; ...' if len(rows) > 3 else ''})"
                                 + ("; docs/acquisition.md" if geo else "; fix them and rerun with --fresh to use them"))
    return record


def gather(run_dir: Path):
    """Collect the units' predictions into the run's predictions.csv; every unit must be complete.

    With repeats, also ``predictions_ensemble.csv``: the seed ensemble, per model and scan the
    mean of its repeats (:func:`icpcv.stats.repeats.ensemble`), which the analysis uses as each
    repeated model's prediction.
    """
    run = RunDir(run_dir)
    rec = run.read_record()
    preds = run.gather_predictions(rec)
    if rec.config.tune:  # issue 21: the choice in each outer fold (tuning.json) and the tuned model's rows
        _, tuned = write_tuning(run.path)
        preds = pd.concat([preds, tuned[preds.columns]], ignore_index=True)
    run.write_predictions(preds)
    run.write_ensemble(ensemble(preds, source=str(run.predictions_csv)) if rec.config.repeats > 1 else None)
    return preds


def finish(run_dir: Path, progress: Progress | None = None) -> Path:
    """Predictions -> stats.json -> index.html.

    When the run directory holds a leakage audit of this very run (``leakage.json`` written by
    ``run --leakage-audit``), its summary goes into stats.json as ``scan_split_audit``. The cohort's
    pressure steps (when it carries them) define trending's change pairs.
    """
    run = RunDir(run_dir)
    rec = run.read_record()
    cfg = rec.config
    preds = gather(run.path)
    result = analyze_study(preds, reference=cfg.reference, n_boot=cfg.n_boot, seed=cfg.seed, ci_level=cfg.ci_level,
                           audit_failed=not run.read_plan_audit()["passed"], steps=cohort_mod.read_steps(run.cohort),
                           scans=run.cohort.read_scans())  # issue 19: the acquisition section
    add_run_context(run, rec, preds, result, n_boot=cfg.n_boot, seed=cfg.seed, ci_level=cfg.ci_level)
    write_stats(result, run.stats_json)
    if cfg.saliency:  # issue 14: the folds' attribution maps scored (attribution.json) before the report
        write_attribution(run.path, progress)
    report = write_report(run.path)
    if progress:
        if cfg.split == "scans":
            progress.message(f"scan-level split (leaky, for the audit only): {result.verdict}")
        else:
            progress.message(f"verdict: {result.verdict}")
    return report


def add_run_context(run: RunDir, rec, preds, result, *, n_boot: int, seed: int, ci_level: float) -> None:
    """What a run directory adds to the statistics of its predictions (``finish``, and ``icpcv analyze``
    re-analysing a run's own predictions): the prediction interval for a new monkey, the cohort's
    warnings, the leakage audit's summary and the recipe selection's audit."""
    cfg = rec.config
    if cfg.split == "subjects":  # issue 20: what a prediction for a new monkey is worth (monkey-level residuals only)
        result.extra["prediction_intervals"] = prediction_intervals(primary_predictions(preds)).to_dict()
    try:  # issue 19: the cohort's warnings (e.g. mixed fields of view without --fov-mm) reach stats.json and the report
        result.warnings.extend(w for w in run.cohort.read_meta().get("warnings", []) if w not in result.warnings)
    except (OSError, ValueError):
        pass
    scan_audit = run.scan_split_audit(rec)
    if scan_audit is not None:
        result.extra["scan_split_audit"] = {k: scan_audit[k] for k in ("statement", "n_folds", "ci_level", "models")}
    if cfg.tune:  # issue 21: the choice's stability and the optimism of picking the best recipe by looking
        result.extra["recipe_selection"] = recipe_selection(run, preds, n_boot=n_boot, seed=seed, ci_level=ci_level)


def recipe_selection(run: RunDir, preds, *, n_boot: int, seed: int, ci_level: float) -> dict:
    """Issue 21: stats.json's ``recipe_selection``: tuning.json's choices and stability, and the optimism audit
    (:func:`icpcv.stats.selection.selection_optimism`) of every candidate's outer fits against the tuned model."""
    tuning = run.read_tuning()
    name = tuning["name"]
    audit = selection_optimism(run.read_tuning_candidates(), preds[preds["model"] == name], n_boot=n_boot, seed=seed,
                               ci_level=ci_level)
    return dict(name=name, n_candidates=len(tuning["candidates"]), inner_folds=tuning["inner_folds"],
                candidates=[c["label"] for c in tuning["candidates"]],
                chosen=[f["chosen_label"] for f in tuning["folds"]], stability=tuning["stability"], optimism=audit,
                statement=audit["statement"])


# --------------------------------------------------------------------------- leakage audit

def scan_split_config(cfg: RunConfig, n_folds: int) -> RunConfig:
    """The twin of an honest run for the leakage audit: the same models, data and settings on a
    scan-level random K-fold with as many folds as the honest plan, so that both train on a
    similar share of the scans and differ only in whether a monkey can be on both sides."""
    return replace(cfg, split="scans", folds=int(n_folds), saliency=0,  # issue 14: the twin maps nothing
                   tune=None, inner_folds=None)  # issue 21: nor tunes (plain models only)


def write_scan_split_audit(run_dir: Path, progress: Progress | None = None) -> dict:
    """Pair the honest run's out-of-fold predictions with its scan-split twin's, model by model,
    and write ``leakage.json``: each model's MAE under both splits and the optimism with a
    monkey-level interval and sign-flip p (:func:`icpcv.stats.leakage_summary`)."""
    run = RunDir(run_dir)
    twin = run.scan_split
    rec, twin_rec = run.read_record(), twin.read_record()
    cfg = rec.config
    honest, leaky = run.read_predictions(), twin.read_predictions()
    if set(honest["scan_id"]) != set(leaky["scan_id"]):
        raise RunDirError(f"{twin.path}: the scan-split twin predicted other scans than {run.path}; "
                          "rerun with --fresh")
    summary = leakage_summary(honest, leaky, n_boot=cfg.n_boot, seed=cfg.seed, ci_level=cfg.ci_level)
    data = dict(run_key=rec.key, scan_split_dir=RunDir.SCAN_SPLIT, scan_split_run_key=twin_rec.key,
                scan_split_plan_hash=twin_rec.plan_hash, n_folds=twin_rec.n_folds, **summary)
    run.write_scan_split_audit(data)
    if progress:
        progress.message(f"leakage audit: {summary['statement']}")
    return data


def _prepare_and_execute(cfg: RunConfig, run_dir: Path, *, device, executor, workers, fresh, progress, slurm,
                         threads) -> RunRecord:
    run = RunDir(run_dir)
    rec = prepare(cfg, run.path, fresh=fresh, progress=progress)
    n, R = rec.n_folds, rec.config.repeats
    units = run.units(rec)
    todo = run.incomplete_units(rec)
    if len(todo) < len(units):
        what = ("units (fold, repeat, --tune candidate and inner fold)" if rec.tuning else  # issue 21
                "folds" if R == 1 else "units (fold, repeat)")
        done = [u.label(R) if R > 1 or u.tuning else str(u.fold + 1) for u in units if u not in todo]
        shown = ", ".join(done[:20]) + (", ..." if len(done) > 20 else "")
        progress.message(f"resuming: {len(units) - len(todo)} of {len(units)} {what} already complete "
                         f"({shown}); they are not rerun")
    for u in todo:
        for ck in run.unit(u).checkpoints():
            epoch = checkpoint_epoch(ck)
            progress.message(f"{u.label(R, n)}: will resume {FoldDir.model_of_checkpoint(ck)} "
                             f"from its " + (f"epoch {epoch} checkpoint" if epoch is not None else
                                             "checkpoint (unreadable)"))
    progress.set_folds(len(units) - len(todo), len(units))
    execute(run.path, todo, executor=executor, workers=workers, device=device, progress=progress, slurm=slurm,
            threads=threads)
    return rec


def run(cfg: RunConfig, run_dir: Path, *, device: str = "auto", executor: str = "local", workers: int = 1,
        fresh: bool = False, progress: Progress | None = None, slurm: dict | None = None,
        threads: int | None = None, leakage_audit: bool = False) -> Path:
    """Run everything; returns the path of the HTML report.

    Rerunning the same call after an interruption skips complete folds and resumes an
    incomplete one from its last epoch checkpoint. Failed folds raise :class:`FoldsFailed`
    (listing each with its log) after the other folds have finished.

    ``leakage_audit`` (``run --leakage-audit``): after the honest run, run its scan-level twin
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
    with RunDir(run_dir).lock():
        rec = _prepare_and_execute(cfg, run_dir, **opts)
        if not leakage_audit:
            return finish(run_dir, progress)
        twin = RunDir(run_dir).scan_split
        progress.message(f"leakage audit: the same models on a scan-level random {rec.n_folds}-fold split "
                         f"(monkeys on both sides, on purpose) in {twin.path}")
        try:
            gather(run_dir)
            with twin.lock():
                _prepare_and_execute(scan_split_config(cfg, rec.n_folds), twin.path, **opts)
                finish(twin.path, progress)
            write_scan_split_audit(run_dir, progress)
        except Exception:
            try:  # the honest run is complete and stands on its own: analyse and report it anyway
                finish(run_dir, progress)
            except Exception as exc:
                progress.message(f"the honest run's report failed too: {exc}")
            raise
        return finish(run_dir, progress)
