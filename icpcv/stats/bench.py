"""Benchmark: vectorised cluster bootstrap vs a naive pandas loop.

Workload: 14 subjects, 1,500 scans (the real per-monkey scan counts scaled
to 1,500), 5 models (so 7,500 prediction rows), 10,000 subject-level
resamples, all metrics (mae, rmse, bias, r2, pearson_r, subject-mean MAE,
Bland-Altman slope for every model; MAE and RMSE differences against the
reference for the 4 other models), intervals by the default method.

The naive yardstick is a plain Python loop over resamples that rebuilds the
resampled table with pandas (``concat`` of the drawn subjects' rows) and
computes the same metrics with ``groupby``; it uses the same resample
indices. It is timed on fewer resamples (``--naive-boot``, default 200) and
scaled linearly to 10,000 -- the printed line says so.

Run: ``python -m icpcv.stats.bench``.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pandas as pd

from icpcv.plausible import check_parsed
from icpcv.stats import bootstrap
from icpcv.stats.analysis import (AUTO_METHODS, analyze,
                                  build_blocks)
from icpcv.stats.calibrate import REAL_SCANS_PER_SUBJECT
from icpcv.stats.synthetic import synthetic_predictions
from icpcv.util import natural_sorted


def workload(n_scans=1500, seed=0):
    sizes = np.asarray(REAL_SCANS_PER_SUBJECT, dtype=float)
    sizes = np.floor(sizes / sizes.sum() * n_scans).astype(int)
    sizes[np.argmax(sizes)] += n_scans - sizes.sum()
    return synthetic_predictions(n_subjects=len(sizes), scans=tuple(sizes), seed=seed)


def _prepare(df, reference="ols_iop"):
    df = df.copy()
    df["subject"] = df["subject"].astype(str)
    df["scan_id"] = df["scan_id"].astype(str)
    subjects = natural_sorted(df["subject"].unique())
    code = {s: i for i, s in enumerate(subjects)}
    df["_g"] = df["subject"].map(code).astype(np.intp)
    models = list(dict.fromkeys(df["model"]))
    return df, models, len(subjects)


def vectorised(df, n_boot, seed=0, reference="ols_iop"):
    """The bootstrap core of :func:`analyze`: statistics, resamples, intervals."""
    df, models, G = _prepare(df, reference)
    S, estimands, _, _ = build_blocks(df, models, reference, G, float(df["y_true"].mean()))
    rng = np.random.default_rng(seed)
    idx = bootstrap.resample_indices(G, n_boot, rng)
    counts = bootstrap.counts_from_indices(idx, G)
    out = bootstrap.run_bootstrap(S, estimands, counts, studentized=True)
    cis = []
    for j, em in enumerate(estimands):
        m = AUTO_METHODS["delta" if em.key[0] == "delta" else em.metric]
        cis.append(bootstrap.interval(out, j, m))
    return out, cis, idx


def naive_metrics(d):
    """Metrics of one (resampled) long table, per model, with pandas."""
    d = d.assign(e=d["y_pred"] - d["y_true"], ae=(d["y_pred"] - d["y_true"]).abs())
    res = {}
    for m, g in d.groupby("model", sort=False):
        yt, yp = g["y_true"], g["y_pred"]
        res[(m, "mae")] = g["ae"].mean()
        res[(m, "rmse")] = np.sqrt((g["e"] ** 2).mean())
        res[(m, "bias")] = g["e"].mean()
        res[(m, "r2")] = 1 - (g["e"] ** 2).sum() / ((yt - yt.mean()) ** 2).sum()
        res[(m, "pearson_r")] = np.corrcoef(yt, yp)[0, 1]
        res[(m, "mae_subject_mean")] = g.groupby("_draw")["ae"].mean().mean()
        a = (yt + yp) / 2
        res[(m, "ba_slope")] = np.polyfit(a, g["e"], 1)[0]
    return res


def naive(df, idx, reference="ols_iop"):
    """Plain loop over resamples (rows of ``idx``), pandas groupby per resample."""
    df, models, G = _prepare(df, reference)
    groups = [g for _, g in df.groupby("_g", sort=True)]
    out = []
    for row in idx:
        parts = [groups[g].assign(_draw=j) for j, g in enumerate(row)]
        d = pd.concat(parts, ignore_index=True)
        res = naive_metrics(d)
        for m in models:
            if m != reference:
                for metric in ("mae", "rmse"):
                    res[(m, "delta_" + metric)] = res[(m, metric)] - res[(reference, metric)]
        out.append(res)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m icpcv.stats.bench", description=__doc__.split("\n")[0])
    p.add_argument("--n-boot", type=int, default=10000)
    p.add_argument("--naive-boot", type=int, default=200,
                   help="resamples actually run by the naive loop (then scaled)")
    p.add_argument("--n-scans", type=int, default=1500)
    p.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised timing")
    args = p.parse_args(argv)
    check_parsed(p, args, "bench")  # every number against its range (icpcv.plausible)

    df = workload(args.n_scans)
    n_models = df["model"].nunique()
    print(f"workload: {df['subject'].nunique()} subjects, {args.n_scans} scans, {n_models} models "
          f"({len(df)} rows), {args.n_boot} subject-level resamples, all metrics + 4 paired "
          f"comparisons x 2 metrics, default ('auto') intervals")
    print(f"python {platform.python_version()}, numpy {np.__version__}, machine {platform.machine()}")

    vectorised(df, 100)  # warm-up
    best = np.inf
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        _, _, idx = vectorised(df, args.n_boot)
        best = min(best, time.perf_counter() - t0)
    print(f"vectorised bootstrap core: {best:.3f} s (best of {args.repeat})")

    t0 = time.perf_counter()
    analyze(df, n_boot=args.n_boot)
    t_an = time.perf_counter() - t0
    print(f"full analyze() incl. validation, Bland-Altman, rmcorr, sign-flip tests: {t_an:.3f} s")

    t0 = time.perf_counter()
    naive(df, idx[: args.naive_boot])
    t_naive = time.perf_counter() - t0
    scaled = t_naive * args.n_boot / args.naive_boot
    print(f"naive pandas loop: {t_naive:.2f} s for {args.naive_boot} resamples, scaled x"
          f"{args.n_boot / args.naive_boot:g} to {args.n_boot}: {scaled:.1f} s (estimate, not run)")
    print(f"speed-up of the vectorised core over the naive loop: {scaled / best:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
