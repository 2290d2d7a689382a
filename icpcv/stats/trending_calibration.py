"""Coverage of the concordance-rate intervals (the calibration quoted in icpcv.stats.trending).

Data sets of G monkeys with 8-16 change pairs each; monkey g's pairs agree in direction with
probability p_g ~ Beta(π·k, (1 − π)·k) (k sets how much monkeys differ), so the pooled rate's
target is π. For each method: the share of data sets whose interval contains π, and how many
data sets had no interval (every pair agreeing). The difference of two rates (model − reference,
independent per-monkey rates) is checked with the ``t`` method.

Run: ``python -m icpcv.stats.trending_calibration [--n-sets 1000] [--n-boot 2000]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from icpcv.stats import bootstrap
from icpcv.stats.trending import RATE_CI_METHODS, _rate_interval, compare_concordance

SCENARIOS = ((0.5, 20.0), (0.8, 10.0), (0.9, 10.0), (0.97, 10.0), (0.97, 50.0), (0.99, 30.0))
DIFFERENCES = ((0.5, 0.5), (0.9, 0.5), (0.97, 0.5), (0.8, 0.7))


def rate_coverage(rate, concentration, *, n_subjects=14, pairs=(8, 16), n_sets=1000, n_boot=2000,
                  ci_level=0.95, seed=0):
    """{method: (coverage, data sets without an interval)} for one scenario."""
    rng = np.random.default_rng(seed)
    hits = {m: 0 for m in RATE_CI_METHODS}
    missing = {m: 0 for m in RATE_CI_METHODS}
    for _ in range(n_sets):
        n = rng.integers(pairs[0], pairs[1] + 1, n_subjects).astype(float)
        p = rng.beta(rate * concentration, (1 - rate) * concentration, n_subjects)
        c = rng.binomial(n.astype(int), p).astype(float)
        counts = bootstrap.counts_from_indices(bootstrap.resample_indices(n_subjects, n_boot, rng), n_subjects)
        for m in RATE_CI_METHODS:
            ci, _ = _rate_interval(c, n, ci_level, m, counts)
            if ci is None:
                missing[m] += 1
            elif ci[0] <= rate <= ci[1]:
                hits[m] += 1
    return {m: (hits[m] / n_sets, missing[m]) for m in RATE_CI_METHODS}


def difference_coverage(rate_model, rate_reference, *, n_subjects=14, pairs=(8, 16), n_sets=2000,
                        ci_level=0.95, seed=0):
    """Coverage of the ``t`` interval of the pooled difference of two concordance rates."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_sets):
        n = rng.integers(pairs[0], pairs[1] + 1, n_subjects).astype(float)
        cm = rng.binomial(n.astype(int), rng.beta(rate_model * 10, (1 - rate_model) * 10, n_subjects))
        cr = rng.binomial(n.astype(int), rng.beta(rate_reference * 20, (1 - rate_reference) * 20, n_subjects))
        res = compare_concordance(cm, n, cr, n, ci_level=ci_level)
        hits += res.ci is not None and res.ci[0] <= rate_model - rate_reference <= res.ci[1]
    return hits / n_sets


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m icpcv.stats.trending_calibration",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n-sets", type=int, default=1000)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    print(f"95% intervals, 14 monkeys, 8-16 pairs each, {args.n_sets} data sets per row "
          f"(MC SE about {100 * np.sqrt(0.05 * 0.95 / args.n_sets):.1f}%), bootstrap {args.n_boot}")
    print(f"{'rate':>5} {'k':>4} " + " ".join(f"{m:>14}" for m in RATE_CI_METHODS))
    for i, (rate, k) in enumerate(SCENARIOS):
        cov = rate_coverage(rate, k, n_sets=args.n_sets, n_boot=args.n_boot, seed=[args.seed, i])
        cells = " ".join(f"{100 * c:>6.1f}% ({miss:>3})" for c, miss in cov.values())
        print(f"{rate:>5} {k:>4g} {cells}")
    print("(in brackets: data sets without an interval, e.g. every pair agreeing)")
    print("difference model - reference, t interval:")
    for i, (a, b) in enumerate(DIFFERENCES):
        print(f"  {a} - {b}: {100 * difference_coverage(a, b, seed=[args.seed, 100 + i]):.1f}%")
    print(f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
