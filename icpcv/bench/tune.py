"""``icpcv bench tune``: what ``run --tune`` costs, and its known answer on the phantom.

* ``icpcv bench tune RUN_DIR``: the cost of ``--tune`` against the plain run, within one run (as
  ``bench repeats`` does): every candidate's outer fit is exactly the unit a plain run of that
  recipe trains (same scans, same seed), so a plain run of one recipe costs the mean over the
  candidates of their outer fits' seconds; ``--tune`` costs every tuning unit (inner trainings
  and outer fits). Prints both, the count of trainings, and the ratio.
* ``icpcv bench tune --known-answer``: over many phantom cohorts (``--cohorts``), nested selection
  in memory (:func:`icpcv.tune.nested.nested_in_memory`: the same plans, fits and rule as a run)
  for a grid of candidates *equal in truth* (``--equal``; default the scan-free ``mean`` fitted on a
  random half of the training monkeys, differing only in the seed of that draw): the naive pick's
  optimism (best candidate's leave-one-monkey-out MAE below the nested estimate) must be above zero
  on average, and the nested estimate must not be below the candidates' average MAE (its expected
  value when they are equal); and for a grid with one *truly better* candidate (``--better``;
  default the scan ridge at a modest penalty against two penalties that shrink it to the mean), how
  many outer folds pick it. Means over cohorts with t intervals.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import stats as sps

from icpcv.util import cpu_name
from icpcv.cohort.phantom import make_cohort
from icpcv.models import CNNS, known_models
from icpcv.rundir import RunDir
from icpcv.stats.selection import choice_stability
from icpcv.tune.nested import nested_in_memory
from icpcv.tune.spec import Candidate, TuneSpec, parse_spec

EQUAL = "mean: subsample=0.5; seed=0,1,2,3"
BETTER = "ridge_scan: alpha=10,100000,1000000"


def cost(run_dir) -> dict:
    """The seconds of a --tune run's tuning units against a plain run of one recipe (see the module)."""
    run = RunDir(run_dir)
    rec = run.read_record()
    if not rec.tuning:
        raise SystemExit(f"{run.path}: not a run with --tune")
    units = run.tuning_units(rec)
    sec = {u: float(run.unit(u).read_record()["seconds"]) for u in units}
    C = len(rec.tuning["repeats"])
    outer = {c: sum(s for u, s in sec.items() if u.candidate == c and u.inner < 0) for c in range(C)}
    inner = sum(s for u, s in sec.items() if u.inner >= 0)
    plain_one = float(np.mean(list(outer.values())))
    tuned = inner + sum(outer.values())
    n_inner = sum(1 for u in units if u.inner >= 0)
    return dict(run=str(run.path), n_candidates=C, n_folds=rec.n_folds, inner_per_fold=rec.tuning["inner"],
                n_trainings=len(units), n_inner_trainings=n_inner, n_outer_fits=len(units) - n_inner,
                plain_one_recipe_s=plain_one, tune_s=tuned, inner_s=inner, ratio=tuned / plain_one if plain_one else None,
                plain_units_s=sum(float(run.unit(u).read_record()["seconds"]) for u in run.plain_units(rec)))


def _t(values, level=0.95) -> dict:
    v = np.asarray(values, float)
    m, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    q = sps.t.ppf(0.5 + level / 2, len(v) - 1) if len(v) > 1 else float("nan")
    return dict(mean=m, se=se, ci=[m - q * se, m + q * se], n=int(len(v)))


def fresh_seeds(spec: TuneSpec, i: int) -> TuneSpec:
    """``spec`` for cohort ``i`` with recipe seeds of its own: each candidate's ``seed`` setting plus ``i`` times
    (the largest seed + 1), so that no two cohorts share a draw; candidates without a seed setting unchanged."""
    step = 1 + max((int(c.options["seed"]) for c in spec.candidates if "seed" in c.options), default=-1)
    return TuneSpec(spec.name, tuple(
        Candidate(c.model, tuple(sorted((c.options | {"seed": int(c.options["seed"]) + i * step}).items())))
        if "seed" in c.options else c for c in spec.candidates))


def known_answer(spec_text: str, *, cohorts: int, phantom: str = "small", inner_folds: int | None = None,
                 first_seed: int = 1, signal: float = 1.0, fresh: bool = False, progress=print) -> dict:
    """Nested selection on ``cohorts`` phantom cohorts (data seeds ``first_seed``...); per cohort every
    candidate's leave-one-monkey-out MAE, the nested MAE and the choices (by the spec's labels). ``fresh``:
    each cohort's recipes get seeds of their own (:func:`fresh_seeds`), so that the recipes' draws are random
    over cohorts as the data are (the nested estimate's expected excess over the candidates' average is then
    exactly zero; with the same seeds in every cohort, the same draws recur: docs/tuning.md)."""
    spec = parse_spec(spec_text, is_network=lambda m: m in CNNS, known_models=known_models())
    if any(m in CNNS for m in spec.models):
        raise SystemExit("the known-answer benchmark runs on the CPU: give baselines (mean, ols_iop, ridge_scan)")
    need_volumes = "ridge_scan" in spec.models
    rows = []
    for i in range(cohorts):
        t0 = time.perf_counter()
        scans, volumes, _ = make_cohort(phantom, signal=signal, seed=first_seed + i)
        mine = fresh_seeds(spec, i) if fresh else spec
        out = nested_in_memory(scans[["scan_id", "subject", "iop", "icp"]], volumes if need_volumes else None, mine,
                               inner_folds=inner_folds, seed=0)
        label = {a.label: b.label for a, b in zip(mine.candidates, spec.candidates)}  # the spec's labels
        cand, tuned = out["candidates"].assign(model=lambda d: d["model"].map(label)), out["tuned"]
        out["choices"] = [label[c] for c in out["choices"]]
        maes = {m: float(np.mean(np.abs(g["y_pred"] - g["y_true"]))) for m, g in cand.groupby("model", sort=False)}
        nested = float(np.mean(np.abs(tuned["y_pred"] - tuned["y_true"])))
        rows.append(dict(data_seed=first_seed + i, candidates=maes, nested=nested, best=min(maes.values()),
                         average=float(np.mean(list(maes.values()))), choices=out["choices"]))
        progress(f"cohort {i + 1}/{cohorts} (data seed {first_seed + i}): best {rows[-1]['best']:.3f}, nested "
                 f"{nested:.3f}, average {rows[-1]['average']:.3f} mmHg; {time.perf_counter() - t0:.1f} s")
    choices = [c for r in rows for c in r["choices"]]
    return dict(spec=spec_text, phantom=phantom, cohorts=cohorts, inner_folds=inner_folds, fresh_seeds=fresh,
                candidates=[c.label for c in spec.candidates],
                optimism=_t([r["nested"] - r["best"] for r in rows]),  # the audit's optimism (naive pick)
                nested_minus_average=_t([r["nested"] - r["average"] for r in rows]),
                best_minus_average=_t([r["best"] - r["average"] for r in rows]),
                chosen=choice_stability(choices)["counts"], n_choices=len(choices), per_cohort=rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="icpcv bench tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run directories made with --tune (the cost)")
    p.add_argument("--known-answer", action="store_true", help="the phantom simulation (see above)")
    p.add_argument("--cohorts", type=int, default=40)
    p.add_argument("--better-cohorts", type=int, default=10)
    p.add_argument("--phantom", default="small")
    p.add_argument("--better-phantom", default="tiny")
    p.add_argument("--inner-folds", type=int)
    p.add_argument("--fresh-seeds", action="store_true",
                   help="give each cohort's recipes seeds of their own (the --equal grid's seeds plus a cohort offset)")
    p.add_argument("--skip-better", action="store_true", help="run the equal grid only")
    p.add_argument("--equal", default=EQUAL, help=f"grid equal in truth (default {EQUAL!r})")
    p.add_argument("--better", default=BETTER, help=f"grid with one truly better candidate (default {BETTER!r})")
    p.add_argument("--json", help="also write every figure here")
    args = p.parse_args(argv)
    print(f"machine: {cpu_name()}")
    for path in args.runs:
        m = cost(path)
        print(f"\n{m['run']}: {m['n_candidates']} candidates, {m['n_folds']} outer folds, inner folds per outer fold "
              f"{min(m['inner_per_fold'])}-{max(m['inner_per_fold'])}: {m['n_trainings']} trainings "
              f"({m['n_inner_trainings']} inner, {m['n_outer_fits']} outer fits)")
        print(f"  a plain run of one recipe: {m['plain_one_recipe_s']:.1f} s of training; --tune: {m['tune_s']:.1f} s "
              f"(inner {m['inner_s']:.1f} s): x{m['ratio']:.1f}")
    if not args.known_answer:
        return 0
    figures = {}
    for what, spec, n, phantom in (("equal", args.equal, args.cohorts, args.phantom),
                                   ("better", args.better, args.better_cohorts, args.better_phantom))[:1 + (not args.skip_better)]:
        print(f"\n{what} in truth: --tune {spec!r} on {n} {phantom} phantom cohorts" if what == "equal" else
              f"\none truly better: --tune {spec!r} on {n} {phantom} phantom cohorts")
        r = known_answer(spec, cohorts=n, phantom=phantom, inner_folds=args.inner_folds,
                         fresh=args.fresh_seeds and what == "equal")
        figures[what] = r
        for key, text in (("optimism", "optimism of the naive pick (nested MAE - best candidate's MAE)"),
                          ("nested_minus_average", "nested MAE - the candidates' average MAE"),
                          ("best_minus_average", "best candidate's MAE - their average")):
            t = r[key]
            print(f"  {text}: {t['mean']:+.3f} mmHg (95% CI {t['ci'][0]:+.3f} to {t['ci'][1]:+.3f}; "
                  f"{t['n']} cohorts)")
        share = ", ".join(f"{k} {v}/{r['n_choices']}" for k, v in r["chosen"].items())
        print(f"  chosen in the outer folds: {share}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
