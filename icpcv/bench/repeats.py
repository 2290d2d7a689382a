"""``icpcv bench repeats RUN_DIR``: what ``--repeats R`` costs against training once, on one run.

A run with repeats holds its own yardstick: its repeat-0 units are exactly the run ``--repeats 1``
would make (same models, same seeds, same fold plan), so the cost ratio is measured within one run,
on one machine, under one load:

* training: the seconds each unit recorded (``record.json``), repeat 0 against all units;
* analysis: :func:`icpcv.stats.study.analyze_study` timed here on the single-seed table of repeat 0
  (what ``--repeats 1`` analyses) and on the full table (the ensemble, ``training_variance``, each
  repeat alone), with the run's bootstrap settings.

It prints both, the per-repeat MAE differences against the reference, the ensemble's verdict and
the variance shares, i.e. the row of the README's table (issue 10, part 6).
"""
from __future__ import annotations

import argparse
import time

from icpcv.util import cpu_name
from icpcv.plausible import check_parsed
from icpcv.rundir import RunDir
from icpcv.stats.repeats import single_seed_table
from icpcv.stats.study import analyze_study


def measure(run_dir, *, n_boot: int | None = None) -> dict:
    """The figures of one run with repeats (see the module's description)."""
    run = RunDir(run_dir)
    rec = run.read_record()
    cfg = rec.config
    if cfg.repeats < 2:
        raise SystemExit(f"{run.path}: trained with --repeats {cfg.repeats}; nothing to compare")
    seconds = {u: float(run.unit(u).read_record()["seconds"]) for u in run.units(rec)}
    once = sum(s for u, s in seconds.items() if u.repeat == 0)
    every = sum(seconds.values())
    table = run.read_predictions()
    settings = dict(reference=cfg.reference, n_boot=n_boot or cfg.n_boot, seed=cfg.seed, ci_level=cfg.ci_level)
    t0 = time.perf_counter()
    analyze_study(single_seed_table(table, 0), **settings)
    t_once = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = analyze_study(table, **settings)
    t_every = time.perf_counter() - t0
    tv = result.extra["training_variance"]
    return dict(run=str(run.path), repeats=cfg.repeats, signal=cfg.signal, n_folds=rec.n_folds,
                train_once_s=once, train_all_s=every, analysis_once_s=t_once, analysis_all_s=t_every,
                ratio=(every + t_every) / (once + t_once), verdict=result.verdict, training_variance=tv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="icpcv bench repeats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories made with --repeats R > 1")
    p.add_argument("--n-boot", type=int, help="bootstrap resamples for the timed analyses (default: the run's)")
    args = p.parse_args(argv)
    check_parsed(p, args, "bench")  # every number against its range (icpcv.plausible)
    print(f"machine: {cpu_name()}")
    for path in args.runs:
        m = measure(path, n_boot=args.n_boot)
        tv = m["training_variance"]
        print(f"\n{m['run']}: signal {m['signal']:g}, {m['n_folds']} folds, --repeats {m['repeats']}")
        print(f"  training: repeat 0 alone (= --repeats 1) {m['train_once_s']:.0f} s, all units "
              f"{m['train_all_s']:.0f} s; analysis {m['analysis_once_s']:.1f} s vs {m['analysis_all_s']:.1f} s")
        print(f"  cost of --repeats {m['repeats']} against --repeats 1: x{m['ratio']:.2f}")
        for name, mt in tv["models"].items():
            per = ", ".join(f"{c['delta']:+.2f}" for c in mt["per_repeat"])
            e = mt["ensemble"]
            v = mt["variance"] or {}
            share = (f"monkey sampling {100 * v['monkey_share']:.0f}%, training noise {100 * v['training_share']:.0f}%"
                     if v.get("monkey_share") is not None else "no decomposition")
            ci = f"[{e['ci'][0]:+.2f}, {e['ci'][1]:+.2f}]" if e["ci"] and None not in e["ci"] else "[no interval]"
            print(f"  {name} - {tv['reference']}: per repeat {per}; ensemble {e['delta']:+.2f} "
                  f"{ci}; {mt['n_called_better']} of {mt['n_repeats']} "
                  f"called better alone; {share}")
        print(f"  verdict: {m['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
