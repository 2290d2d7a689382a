"""Coverage over new monkeys, measured (``icpcv bench coverage``): does the interval hold what it says?

Each replicate draws a training cohort of G phantom monkeys and N new monkeys of the same
population (:func:`icpcv.cohort.phantom.new_subjects`), fits each model leave-one-monkey-out as a run
does (the baselines fit every training-side scan), and builds two intervals for every scan of the
new monkeys at each level:

* ``monkey``: icpcv's, the hierarchical CV+ of :mod:`icpcv.stats.intervals` on the leave-one-monkey-out
  residuals (each monkey weighs 1/(G + 1));
* ``naive``: the scan-level CV+ (Barber et al. 2021) on K-fold residuals over *scans*, each scan its own
  group: what a conformal tool for exchangeable samples (MAPIE on scans) gives. Its calibration scans
  have monkeys the models trained on, so a model that recognises a monkey looks better than it is.

Coverage of a new monkey = the share of its scans inside their interval (one scan drawn at random,
the guarantee's event); the figure is its mean over new monkeys and replicates, with the Monte Carlo
standard error from the replicates' means (monkeys of one replicate share a training cohort).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from icpcv.cohort import ScanSet
from icpcv.cohort.phantom import make_cohort, new_subjects
from icpcv.models import make_model
from icpcv.stats.intervals import REPORT_LEVELS, cv_plus_interval

CHEAP_MODELS = ("mean", "ols_iop", "ridge_scan")


def _fit_predict(name: str, train: ScanSet, targets: list[ScanSet]) -> list[np.ndarray]:
    model = make_model(name).fit(train)
    return [np.asarray(model.predict(t), float) for t in targets]


def one_replicate(rep: int, *, preset: str = "tiny", models=CHEAP_MODELS, levels=REPORT_LEVELS, signal: float = 1.0,
                  n_subjects: int | None = None, n_new: int = 10, naive_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """One training cohort and its new monkeys: per model, method, level and new monkey, the share of its
    scans covered and the mean width."""
    data_seed = int(np.random.SeedSequence([int(seed), int(rep)]).generate_state(1)[0])
    scans, volumes, _ = make_cohort(preset, signal=signal, seed=data_seed, n_subjects=n_subjects)
    new, new_volumes, _ = new_subjects(preset, n_new, signal=signal, data_seed=data_seed, seed=rep)
    train_all = ScanSet.from_arrays(scans.reset_index(drop=True), volumes)
    target = ScanSet.from_arrays(new.reset_index(drop=True), new_volumes)
    subjects = scans["subject"].astype(str).to_numpy()
    y = scans["icp"].to_numpy(float)
    y_new = new["icp"].to_numpy(float)
    new_subj = new["subject"].astype(str).to_numpy()
    monkeys = list(dict.fromkeys(subjects))
    rng = np.random.default_rng([int(seed), int(rep), 7])
    scan_fold = rng.permutation(np.arange(len(scans)) % naive_folds)
    rows = []
    for name in models:
        for method in ("monkey", "naive"):
            if method == "monkey":
                parts = [(subjects == g) for g in monkeys]
            else:
                parts = [(scan_fold == k) for k in range(naive_folds)]
            oof = np.empty(len(scans))
            centres = np.empty((len(scans), len(new)))  # row i: the fold model that held scan i out, on each new scan
            for held in parts:
                train = ScanSet.from_arrays(scans[~held].reset_index(drop=True), volumes[~held])
                test = ScanSet.from_arrays(scans[held].reset_index(drop=True), volumes[held])
                p_test, p_new = _fit_predict(name, train, [test, target])
                oof[held] = p_test
                centres[held] = p_new
            groups = subjects if method == "monkey" else np.arange(len(scans)).astype(str)
            scores = np.abs(y - oof)
            for level in levels:
                low, high = cv_plus_interval(centres.T, scores, groups, level)
                covered = (low <= y_new) & (y_new <= high)
                width = high - low
                for m in dict.fromkeys(new_subj):
                    sel = new_subj == m
                    rows.append(dict(rep=rep, model=name, method=method, level=float(level), subject=m,
                                     coverage=float(covered[sel].mean()),
                                     width=float(width[sel].mean()), finite=bool(np.isfinite(width[sel]).all()),
                                     n_train_subjects=len(monkeys)))
    del train_all
    return pd.DataFrame(rows)


def coverage_study(n_reps: int = 20, **kw) -> pd.DataFrame:
    """Every replicate's rows (:func:`one_replicate`), with BLAS on one thread (small matrices: threads only
    contend, and a shared machine's other jobs make a multi-threaded SVD many times slower)."""
    with threadpool_limits(limits=1):
        return pd.concat([one_replicate(r, **kw) for r in range(n_reps)], ignore_index=True)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model, method and level: coverage (mean over new monkeys), its Monte Carlo standard error (from the
    replicates' means), the median width and the share of unbounded intervals."""
    out = []
    for (model, method, level), r in rows.groupby(["model", "method", "level"], sort=False):
        per_rep = r.groupby("rep")["coverage"].mean()
        se = float(per_rep.std(ddof=1) / math.sqrt(len(per_rep))) if len(per_rep) > 1 else float("nan")
        finite = r[r["finite"]]
        out.append(dict(model=model, method=method, level=level, coverage=float(r["coverage"].mean()), mc_se=se,
                        n_reps=int(len(per_rep)), n_new_monkeys=int(len(r)),
                        median_width=float(finite["width"].median()) if len(finite) else float("inf"),
                        unbounded=float(1 - r["finite"].mean())))
    return pd.DataFrame(out)


def table_markdown(summary: pd.DataFrame) -> str:
    lines = ["| model | level | monkey-level coverage (MC se) | median width | naive scan-level coverage (MC se) | "
             "median width |", "| --- | --- | --- | --- | --- | --- |"]
    for (model, level), r in summary.groupby(["model", "level"], sort=False):
        m = r[r["method"] == "monkey"].iloc[0]
        n = r[r["method"] == "naive"].iloc[0]

        def w(x):
            return "unbounded" if not math.isfinite(x) else f"{x:.1f} mmHg"

        lines.append(f"| {model} | {100 * level:g}% | {100 * m.coverage:.1f}% ({100 * m.mc_se:.1f}) | {w(m.median_width)} "
                     f"| {100 * n.coverage:.1f}% ({100 * n.mc_se:.1f}) | {w(n.median_width)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="icpcv bench coverage", description=__doc__.split("\n\n")[0])
    p.add_argument("--phantom", default="small", help="phantom preset of the cohorts (default small)")
    p.add_argument("--subjects", type=int, default=None, help="training monkeys per cohort (default: the preset's)")
    p.add_argument("--new", type=int, default=10, help="new monkeys per replicate (default 10)")
    p.add_argument("--reps", type=int, default=20, help="replicates (training cohorts; default 20)")
    p.add_argument("--models", default=",".join(CHEAP_MODELS), help="baselines to measure (default mean,ols_iop,ridge_scan)")
    p.add_argument("--levels", default=",".join(f"{x:g}" for x in REPORT_LEVELS))
    p.add_argument("--signal", type=float, default=1.0)
    p.add_argument("--naive-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="also write every replicate's rows here")
    args = p.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    for m in models:
        if make_model(m).stochastic:
            print(f"icpcv bench coverage: {m} is a network; this benchmark fits baselines only (a network's intervals "
                  "come from a run: icpcv run, then icpcv predict --new-subjects)", file=sys.stderr)
            return 2
    levels = tuple(float(x) for x in args.levels.split(","))
    t0 = time.perf_counter()
    rows = coverage_study(args.reps, preset=args.phantom, models=models, levels=levels, signal=args.signal,
                          n_subjects=args.subjects, n_new=args.new, naive_folds=args.naive_folds, seed=args.seed)
    if args.csv:
        rows.to_csv(args.csv, index=False)
    summary = summarise(rows)
    g = int(rows["n_train_subjects"].iloc[0])
    print(f"coverage over {args.reps} x {args.new} new monkeys; phantom {args.phantom}, {g} training monkeys, signal "
          f"{args.signal:g}; finite up to level {g}/{g + 1} = {g / (g + 1):.3f}; {time.perf_counter() - t0:.0f} s")
    print(table_markdown(summary))
    return 0
