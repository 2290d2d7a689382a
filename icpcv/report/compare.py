"""Comparing runs made on the same fold plan (warm vs cold start, two CNN depths, ...).

The runs' out-of-fold predictions are stacked with each model renamed ``<run>:<model>`` and handed
to :func:`icpcv.stats.analyze`, so the paired monkey-level intervals and sign-flip tests are the
statistics engine's own. Runs on different fold plans are refused: their held-out monkeys were
predicted by models trained on different monkeys, so scans would not pair. A run trained with
``--repeats`` enters with its seed ensemble (per model and scan, the mean of the repeats: the
predictions its own analysis speaks of).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from icpcv.errors import InputError, RunDirError
from icpcv.plausible import in_option_words
from icpcv.report import write_report
from icpcv.stats.study import primary_predictions
from icpcv.rundir import RunDir, RunRecord, read_json_file
from icpcv.stats import analyze, write_stats
from icpcv.writable import check_inputs_kept, check_output_dir

SEP = ":"


@dataclass
class RunInput:
    run: RunDir
    name: str
    record: RunRecord
    plan_hash: str
    predictions: pd.DataFrame
    environment: dict

    @property
    def path(self) -> Path:
        return self.run.path


def read_run_input(path: Path, name: str) -> RunInput:
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunDirError(f"{run.path}: no such run directory")
    for f in (run.run_json, run.fold_plan_json, run.predictions_csv):
        if not f.exists():
            hint = ("its folds are not all gathered; rerun `icpcv run` with the same --out"
                    if f == run.predictions_csv else "not a run directory written by `icpcv run`")
            raise RunDirError(f"{run.path}: cannot compare: {f.name} is missing ({hint})")
    plan = run.read_plan_dict()
    if "hash" not in plan:
        raise RunDirError(f"{run.fold_plan_json}: has no hash; was it written by `icpcv run`?")
    env = read_json_file(run.environment_json) if run.environment_json.exists() else {}
    return RunInput(run=run, name=name, record=run.read_record(), plan_hash=plan["hash"],
                    predictions=primary_predictions(run.read_predictions()), environment=env)


def run_names(paths: list[Path], names: list[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(paths):
            raise InputError(f"--names gives {len(names)} names for {len(paths)} runs")
    else:
        names = [Path(p).resolve().name for p in paths]
        if len(set(names)) < len(names):  # same folder name in different places: number them
            names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    bad = [n for n in names if not n or SEP in n]
    if bad:
        raise InputError(f"run name {bad[0]!r} is empty or contains {SEP!r}; choose names with --names")
    if len(set(names)) < len(names):
        raise InputError(f"--names repeats a name: {', '.join(names)}")
    return names


def check_same_plan(runs: list[RunInput]) -> str:
    first = runs[0]
    for r in runs[1:]:
        if r.plan_hash != first.plan_hash:
            raise RunDirError(
                f"cannot compare {first.path} and {r.path}: their fold plans differ (fold_plan.json hash "
                f"{first.plan_hash} vs {r.plan_hash}); paired comparisons need every monkey held out in the same "
                "fold with the same training monkeys, so rerun one with the other's cohort, --folds, --split, "
                "--val-fraction and --seed")
    return first.plan_hash


def check_same_truth(runs: list[RunInput]) -> None:
    """Same plan, same scans: the measured ICP of each scan must agree too."""
    first = runs[0].predictions.drop_duplicates("scan_id").set_index("scan_id")["y_true"]
    for r in runs[1:]:
        other = r.predictions.drop_duplicates("scan_id").set_index("scan_id")["y_true"]
        both = first.index.intersection(other.index)
        differ = both[(first[both] - other[both]).abs() > 1e-9]
        if len(differ):
            raise RunDirError(f"cannot compare {runs[0].path} and {r.path}: same fold plan but the measured ICP "
                              f"differs on {len(differ)} scans (first: {differ[0]}); the data changed between runs")


def config_differences(runs: list[RunInput]) -> list[dict]:
    cfgs = [r.record.config.flat() for r in runs]
    keys = list(dict.fromkeys(k for c in cfgs for k in c))
    return [dict(key=k, values=[c.get(k) for c in cfgs]) for k in keys
            if len({repr(c.get(k)) for c in cfgs}) > 1]


def pick_models(runs: list[RunInput], models: list[str] | None) -> list[str]:
    """The models taken from every run: as asked, or by default those present in every run whose
    predictions differ between runs (identical copies of a baseline add nothing but tests); when
    none differs that is an InputError, not every model."""
    per_run = [list(dict.fromkeys(r.predictions["model"])) for r in runs]
    common = [m for m in per_run[0] if all(m in p for p in per_run[1:])]
    if models:
        for r, p in zip(runs, per_run):
            gone = [m for m in models if m not in p]
            if gone:
                raise InputError(f"{r.path}: has no predictions for model(s) {', '.join(gone)} "
                                 f"(it has {', '.join(p)})")
        return list(models)
    if not common:
        raise InputError("the runs share no model; name the models to compare with --models")

    def key(r, m):
        d = r.predictions[r.predictions["model"] == m]
        return d.sort_values("scan_id")[["scan_id", "y_pred"]].to_numpy().tolist()

    differing = [m for m in common if any(key(r, m) != key(runs[0], m) for r in runs[1:])]
    if not differing:
        raise InputError(f"no model's predictions differ between the runs ({', '.join(str(r.path) for r in runs)}): "
                         f"every shared model ({', '.join(common)}) predicted every scan alike, so there is nothing "
                         "to compare; to compare them anyway name the models with --models")
    return differing


def selection_note(runs: list[RunInput], models: list[str]) -> str | None:
    """Issue 21: two or more runs of one model on the same monkeys are recipes of it; reporting the best of them
    is recipe selection after seeing the held-out monkeys (optimistic), which ``run --tune`` does honestly."""
    if len(runs) < 2 or not models:
        return None
    shown = ", ".join(models[:3]) + (", ..." if len(models) > 3 else "")
    return (f"These {len(runs)} runs are {len(runs)} recipes of {shown} on the same monkeys and fold plan. Picking "
            "the best of them by the MAEs above is recipe selection after seeing the held-out monkeys: the winner's "
            f"MAE is the smallest of {len(runs)} noisy estimates and so optimistic (Varma & Simon 2006; Cawley & "
            "Talbot 2010). To choose honestly, give the recipes as candidates of one run with --tune (e.g. --tune "
            "\"cnn: lr=1e-3,3e-4\", or a TOML file of the runs' settings): each outer fold then chooses on inner "
            "folds of its training monkeys only, and the run reports how optimistic the naive pick would have been "
            "(docs/tuning.md).")


def stacked_predictions(runs: list[RunInput], models: list[str]) -> pd.DataFrame:
    parts = []
    for r in runs:
        d = r.predictions[r.predictions["model"].isin(models)].copy()
        d["model"] = r.name + SEP + d["model"]
        parts.append(d)
    return pd.concat(parts, ignore_index=True)


def compare_runs(paths, out, *, names: list[str] | None = None, models: list[str] | None = None,
                 reference: str | None = None, n_boot: int | None = None, seed: int | None = None,
                 ci_level: float | None = None, ci_method: str | None = None) -> Path:
    """Write a comparison directory (compare.json, predictions.csv, stats.json, figures/, index.html)
    for runs on the same fold plan; returns the path of its index.html.

    ``reference``: ``RUN:MODEL`` (or ``MODEL``, taken from the first run); by default the first
    run's copy of the first compared model, so each other run's copy is paired against it.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise InputError("compare needs at least two run directories")
    out = RunDir(out)
    if any(out.path.resolve() == p.resolve() for p in paths):
        raise InputError(f"--out {out.path} is one of the runs; choose a new folder for the comparison")
    if out.run_json.exists():
        raise InputError(f"--out {out.path} holds a run; choose a new folder for the comparison")
    check_output_dir(out.path, what="comparison")
    check_inputs_kept(out.path, paths)  # a run inside a folder the comparison writes (figures/, folds/...)
    same = [(a, b) for i, a in enumerate(paths) for b in paths[i + 1:] if a.resolve() == b.resolve()]
    if same:
        raise InputError(f"{same[0][0]} and {same[0][1]} are the same run directory: a run compared with itself "
                         "differs in nothing; name two different runs")
    names = run_names(paths, names)
    runs = [read_run_input(p, n) for p, n in zip(paths, names)]
    plan_hash = check_same_plan(runs)
    check_same_truth(runs)
    models = pick_models(runs, models)
    preds = stacked_predictions(runs, models)
    if reference is None:
        reference = names[0] + SEP + models[0]
    elif SEP not in reference:
        reference = names[0] + SEP + reference
    if reference not in set(preds["model"]):
        raise InputError(f"--reference {reference} is not among the compared models "
                         f"({', '.join(dict.fromkeys(preds['model']))})")
    cfg0 = runs[0].record.config
    n_boot = int(n_boot if n_boot is not None else cfg0.n_boot)
    seed = int(seed if seed is not None else cfg0.seed)
    ci_level = float(ci_level if ci_level is not None else cfg0.ci_level)
    leaky = [r.name for r in runs if r.run.plan_audit_failed()]
    kwargs = dict(reference=reference, n_boot=n_boot, seed=seed, ci_level=ci_level, audit_failed=bool(leaky))
    if ci_method is not None:
        kwargs["ci_method"] = ci_method
    try:
        result = analyze(preds, **kwargs)
    except ValueError as exc:  # the engine's word on bad options or predictions
        raise InputError(f"cannot analyse the stacked predictions: {in_option_words(exc)}") from None
    note = selection_note(runs, models)  # issue 21
    if note:
        result.warnings.append(note)
    out.path.mkdir(parents=True, exist_ok=True)
    out.write_predictions(preds)
    write_stats(result, out.stats_json)
    meta = dict(plan_hash=plan_hash, reference=reference, models=models, n_boot=n_boot, seed=seed,
                ci_level=ci_level, ci_method=ci_method, leaky_runs=leaky,
                runs=[dict(name=r.name, path=str(r.path.resolve()), models=models, plan_hash=r.plan_hash,
                           data_hash=r.record.data_hash, config_hash=r.record.config_hash,
                           key=r.record.key, config=r.record.config.to_dict(), environment=r.environment)
                      for r in runs],
                config_differences=config_differences(runs), selection_note=note)
    out.write_compare_meta(meta)
    return write_report(out.path)
