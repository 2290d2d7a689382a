"""Benchmark: the training-variance split and the single seed's interval on a scan-level simulation.

``python -m icpcv bench variance`` (or ``python -m icpcv.stats.repeats_bench``) simulates cohorts
scan by scan, with known parts, and prints for each scenario:

* the truth of the parts of a single-seed MAE difference's variance (monkey sampling = the
  monkeys' own effects + the sampling of their scans; training noise), and the mean over cohorts
  of :func:`icpcv.stats.repeats.variance_components` with the scan part
  (:func:`~icpcv.stats.repeats.scan_level_parts`) and without it (the estimator before issue 22),
  each with its Monte Carlo standard error;
* the variance of the simulated single-seed and ensemble estimates, against M + T and M + T/R;
* the coverage of the monkey-level interval of the MAE difference that ``analyze`` reports by
  default for it (``t``: jackknife over monkeys, :func:`icpcv.stats.bootstrap.t_interval`) for one
  training seed and for the seed ensemble of R, around the true difference (the mean over
  monkeys, scans and seeds).

Data-generating process (per cohort; scans of monkey g in a fixed order, repeats r = 1..R)::

    d_gir = mu + a_g + u_gi + e_gr + h_gir
    a_g  ~ N(0, sigma2_monkey)        the monkey's own effect
    u_gi ~ N(0, tau2_g)               the scan's effect, the same in every repeat
    e_gr ~ N(0, sigma2_repeat)        the shift of monkey g's fold network in repeat r
    h_gir ~ N(0, sigma2_scan_noise)   training noise per scan and repeat

d is the scan's loss difference |e_model| - |e_ref|; with positive errors the MAE difference of
a cohort is the scan-weighted mean of d, so the truth is mu, M = sigma2_monkey Σw² + Σ w² tau2_g/n_g
and T = Σ w² (sigma2_repeat + sigma2_scan_noise / n_g), w = n/N. tau2_g spreads from 0.5 to 1.5
times tau2 over the monkeys (scan noise differs between animals).

Scan counts: the real study's, :data:`REAL_TRAINING_COUNTS`; one scenario gives every monkey
the same count to show that the old estimator's bias comes from unequal counts.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from icpcv.plausible import check_parsed
from icpcv.stats.bootstrap import t_interval
from icpcv.stats.repeats import scan_level_parts, variance_components

#: Scans per monkey that the seed's training rule keeps in the real label table
#: (../shared/data/monkey_data.csv: torch_present, numeric ICP > 0, IOP and a monkey id;
#: monkeys 1-11, 13, 14 in that order; monkey 12 has no IOP): 1243 scans, 19 to 251 a monkey.
REAL_TRAINING_COUNTS = (78, 83, 84, 61, 251, 194, 35, 48, 33, 100, 168, 89, 19)


@dataclass(frozen=True)
class Scenario:
    """Known parts of the scan-level loss differences (mmHg² unless said)."""

    name: str
    sigma2_monkey: float = 0.1
    tau2: float = 4.0
    sigma2_repeat: float = 0.025
    sigma2_scan_noise: float = 1.0
    mu: float = -0.3
    counts: tuple = REAL_TRAINING_COUNTS


SCENARIOS = (
    Scenario("real counts, weak training noise"),
    Scenario("real counts, strong training noise", sigma2_repeat=0.5),
    Scenario("equal counts, weak training noise", counts=(96,) * 13),
)


def tau2_by_monkey(sc: Scenario) -> np.ndarray:
    """tau2_g: from 0.5 to 1.5 times tau2, assigned to the monkeys in a fixed shuffled order."""
    G = len(sc.counts)
    return sc.tau2 * np.random.default_rng(12345).permutation(np.linspace(0.5, 1.5, G))


def truth(sc: Scenario) -> dict:
    """The parts of the variance of a single-seed difference, from the scenario's parameters."""
    n = np.asarray(sc.counts, dtype=float)
    w = n / n.sum()
    between = sc.sigma2_monkey * np.sum(w**2)
    scans = float(np.sum(w**2 * tau2_by_monkey(sc) / n))
    training = float(np.sum(w**2 * (sc.sigma2_repeat + sc.sigma2_scan_noise / n)))
    monkey = between + scans
    return dict(between_monkeys=between, scans_within_monkeys=scans, monkey_sampling=monkey,
                training_noise=training, single_seed_total=monkey + training,
                training_share=training / (monkey + training), sigma2_monkey=sc.sigma2_monkey, mu=sc.mu)


def simulate(rng, sc: Scenario, n_cohorts: int, R: int) -> np.ndarray:
    """Scan-level loss differences, shape (n_cohorts, N, R), scans in monkey order."""
    n = np.asarray(sc.counts)
    G, N = n.size, int(n.sum())
    codes = np.repeat(np.arange(G), n)
    a = rng.normal(0.0, np.sqrt(sc.sigma2_monkey), (n_cohorts, G))[:, codes]
    u = rng.normal(0.0, 1.0, (n_cohorts, N)) * np.sqrt(tau2_by_monkey(sc))[codes]
    e = rng.normal(0.0, np.sqrt(sc.sigma2_repeat), (n_cohorts, G, R))[:, codes, :]
    h = rng.normal(0.0, np.sqrt(sc.sigma2_scan_noise), (n_cohorts, N, R))
    return sc.mu + (a + u)[..., None] + e + h


def estimates(d: np.ndarray, counts) -> dict:
    """Per cohort: the split with and without the scan part, and the single-seed and ensemble estimates."""
    n = np.asarray(counts, dtype=float)
    D, S = scan_level_parts(d, counts)
    new = variance_components(D, n, scan_variance=S)
    old = variance_components(D, n)
    w = n / n.sum()
    return dict(new=new, old=old, D=D, single=D[..., 0] @ w, ensemble=D.mean(axis=-1) @ w)


def _jackknife(Dg: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Leave-one-monkey-out pooled differences of per-monkey means Dg (cohorts x G)."""
    sums = Dg * n
    total = sums.sum(axis=-1, keepdims=True)
    return (total - sums) / (n.sum() - n)


def coverage(Dg: np.ndarray, n, truth_mu: float, ci_level: float = 0.95) -> float:
    """Share of cohorts whose default interval of the pooled difference (t, jackknife over
    monkeys: :func:`icpcv.stats.bootstrap.t_interval`) covers ``truth_mu``."""
    n = np.asarray(n, dtype=float)
    theta = Dg @ (n / n.sum())
    jack = _jackknife(Dg, n)
    hits = 0
    for t, j in zip(theta, jack):
        lo, hi = t_interval(float(t), j, ci_level)
        hits += lo <= truth_mu <= hi
    return hits / theta.size


def run_scenario(sc: Scenario, n_cohorts: int, R: int = 5, seed: int = 0, chunk: int = 1000) -> dict:
    """Simulate ``n_cohorts`` cohorts of the scenario; return the means, their Monte Carlo SEs and coverage."""
    rng = np.random.default_rng(seed)
    keys = ("monkey_sampling_raw", "between_monkeys", "scans_within_monkeys", "training_noise", "sigma2_monkey")
    acc = {f"{v}:{k}": [] for v in ("new", "old") for k in keys}
    single, ens, cov1, covR = [], [], 0.0, 0.0
    tr = truth(sc)
    done = 0
    while done < n_cohorts:
        m = min(chunk, n_cohorts - done)
        est = estimates(simulate(rng, sc, m, R), sc.counts)
        for v in ("new", "old"):
            for k in keys:
                acc[f"{v}:{k}"].append(np.asarray(est[v][k]))
        single.append(est["single"])
        ens.append(est["ensemble"])
        cov1 += coverage(est["D"][..., 0], sc.counts, sc.mu) * m
        covR += coverage(est["D"].mean(axis=-1), sc.counts, sc.mu) * m
        done += m
    out = {"scenario": sc, "truth": tr, "n_cohorts": n_cohorts, "R": R}
    for key, parts in acc.items():
        x = np.concatenate(parts)
        out[key] = (float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size)))
    s, e = np.concatenate(single), np.concatenate(ens)
    out["var_single"] = float(s.var(ddof=1))
    out["var_ensemble"] = float(e.var(ddof=1))
    out["coverage_single"] = cov1 / n_cohorts
    out["coverage_ensemble"] = covR / n_cohorts
    return out


def report(res: dict) -> str:
    sc, tr, R = res["scenario"], res["truth"], res["R"]
    n = res["n_cohorts"]

    def row(label, key, truth_value):
        mean, se = res[key]
        return (f"  {label:<44}{mean:>9.5f} ± {se:.5f}   truth {truth_value:.5f}   "
                f"bias {100 * (mean - truth_value) / truth_value:+6.1f}% ({(mean - truth_value) / se:+.1f} SE)")

    def cov(p):
        return f"{100 * p:.1f}% (MC SE {100 * np.sqrt(p * (1 - p) / n):.1f})"

    lines = [f"{sc.name}: {len(sc.counts)} monkeys, {sum(sc.counts)} scans ({min(sc.counts)}-{max(sc.counts)} a monkey), "
             f"R = {R}, {n} cohorts; training share {100 * tr['training_share']:.0f}%",
             row("M (monkey sampling), with the scan part", "new:monkey_sampling_raw", tr["monkey_sampling"]),
             row("M, without it (before issue 22)", "old:monkey_sampling_raw", tr["monkey_sampling"]),
             row("  of M: between monkeys, sigma2_a sum w^2", "new:between_monkeys", tr["between_monkeys"]),
             row("  of M: scans within monkeys", "new:scans_within_monkeys", tr["scans_within_monkeys"]),
             row("sigma2_a, with the scan part", "new:sigma2_monkey", tr["sigma2_monkey"]),
             row("sigma2_a, without it", "old:sigma2_monkey", tr["sigma2_monkey"]),
             row("T (training noise)", "new:training_noise", tr["training_noise"]),
             f"  variance of the single-seed estimate {res['var_single']:.5f} (M + T = {tr['single_seed_total']:.5f}); "
             f"of the ensemble {res['var_ensemble']:.5f} (M + T/R = {tr['monkey_sampling'] + tr['training_noise'] / R:.5f})",
             f"  coverage of the default 95% interval (t, jackknife over monkeys) of the true difference: "
             f"one seed {cov(res['coverage_single'])}, ensemble of {R} {cov(res['coverage_ensemble'])}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m icpcv bench variance", description=__doc__.split("\n")[0])
    p.add_argument("--cohorts", type=int, default=20_000, help="simulated cohorts per scenario (default 20000)")
    p.add_argument("--repeats", type=int, default=5, help="training repeats R (default 5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    check_parsed(p, args, "bench")  # every number against its range (icpcv.plausible)
    for i, sc in enumerate(SCENARIOS):
        t0 = time.perf_counter()
        res = run_scenario(sc, args.cohorts, R=args.repeats, seed=args.seed + i)
        print(report(res))
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
