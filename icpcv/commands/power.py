"""``icpcv power RUN_DIR``: how likely is a new study of G monkeys to get the verdict "better"?

From the run's per-monkey paired MAE differences of a model against the reference (the seed
ensemble when the run repeated its networks), :func:`icpcv.stats.power.plan_power` resamples
monkeys into simulated studies and applies the verdict's rule to each. Prints the table, writes
``power.json`` (with the run key and predictions it was made for) and ``figures/power.png``, and
regenerates the report, which shows a power section while ``power.json`` matches the run.
"""
from __future__ import annotations

import re
import sys
from dataclasses import replace
from datetime import datetime, timezone

from icpcv.config import PowerConfig
from icpcv.errors import InputError, RunDirError
from icpcv.plausible import MONKEYS_MAX
from icpcv.rundir import RunDir
from icpcv.util import atomic_write_bytes
from icpcv.writable import check_report_dir

DEFAULTS = PowerConfig()


def parse_monkeys(text: str) -> tuple[int, ...]:
    """``--monkeys 6,10,14``: whole numbers of at least 2, in the order given (duplicates dropped)."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise InputError(f"--monkeys: give study sizes as comma-separated whole numbers, e.g. 6,10,14; got {text!r}")
    out = []
    for t in items:
        if not re.fullmatch(r"[0-9]+", t, re.ASCII):  # int() would read '1_0' and full-width digits
            raise InputError(f"--monkeys: {t!r} is not a whole number of monkeys (give e.g. 6,10,14)")
        g = int(t)
        if not 2 <= g <= MONKEYS_MAX:
            raise InputError(f"--monkeys {g}: accepted 2 to {MONKEYS_MAX} (a study needs at least 2 monkeys for a "
                             f"monkey-level interval and a sign-flip test; {MONKEYS_MAX} is beyond any primate study)")
        if g not in out:
            out.append(g)
    return tuple(out)


def power_config(args) -> PowerConfig:
    if not 0 < args.alpha < 1:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha:g}")
    if args.n_sim < 100:
        raise InputError(f"--n-sim must be at least 100 (simulated studies per size), got {args.n_sim}")
    if args.n_comparisons is not None and args.n_comparisons < 1:
        raise InputError(f"--n-comparisons must be at least 1, got {args.n_comparisons}")
    return PowerConfig(model=args.model, reference=args.reference, monkeys=parse_monkeys(args.monkeys),
                       effect=args.effect, alpha=args.alpha, n_sim=args.n_sim, n_comparisons=args.n_comparisons,
                       seed=args.seed)


def cmd_power(args) -> int:
    from icpcv.report import write_report  # lazy: start-up time (matplotlib, seaborn)
    from icpcv.report import figures as F  # lazy: start-up time
    from icpcv.report.trend_figures import power_curve_figure  # lazy: start-up time
    from icpcv.stats.power import paired_differences, plan_power  # lazy: start-up time (scipy, pandas)
    from icpcv.stats.repeats import ensemble  # lazy: start-up time
    from icpcv.stats.results import AnalysisResult  # lazy: start-up time
    from icpcv.stats.study import has_repeats  # lazy: start-up time

    cfg = power_config(args)
    run = RunDir(args.run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"{run.path}: no such run directory")
    for path, what in ((run.predictions_csv, "predictions.csv"), (run.stats_json, "stats.json")):
        if not path.exists():
            raise RunDirError(f"{run.path}: no {what}; point at a finished run (or `icpcv analyze`) directory")
    check_report_dir(run.path)  # power.json, figures/ and index.html are written there
    stats = AnalysisResult.from_dict(run.read_stats())
    cfg = replace(cfg, reference=cfg.reference or stats.reference or "ols_iop",
                  n_comparisons=cfg.n_comparisons or max(1, len(stats.comparisons) + len(stats.nuisance_comparisons)))
    preds = run.read_predictions()
    if has_repeats(preds):  # the verdict is the seed ensemble's
        preds = ensemble(preds)
    diffs = paired_differences(preds, cfg.model, cfg.reference, source=str(run.predictions_csv))
    ref_mae = float(diffs.loss_reference.sum() / diffs.n_scans.sum())
    if cfg.effect is not None and cfg.effect > ref_mae:  # the model's MAE would be negative: no study can show it
        raise InputError(f"--effect {cfg.effect:g}: larger than the reference {cfg.reference}'s MAE on these scans "
                         f"({ref_mae:.2f} mmHg), so {cfg.model}'s MAE would be {ref_mae - cfg.effect:.2f} mmHg, below "
                         f"zero; accepted up to {ref_mae:.2f} mmHg (an MAE reduction, positive: the model better)")
    result = plan_power(diffs, cfg.monkeys, effect=cfg.effect, alpha=cfg.alpha, n_sim=cfg.n_sim, seed=cfg.seed,
                        n_comparisons=cfg.n_comparisons, n_perm=cfg.n_perm, target_power=cfg.target_power)
    data = result.to_dict() | {"made_for": run.predictions_key(), "settings": cfg.to_dict(),
                               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    run.write_power(data)
    print(result.summary())
    print(f"wrote {run.power_json}")
    with F.style():
        png = F.to_png(power_curve_figure(result))
    run.figures_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.figure_png("power"), png)
    print(f"wrote {run.figure_png('power')}")
    try:
        report = write_report(run.path)
    except Exception as exc:  # the report is someone else's; keep power.json and the figure
        print(f"icpcv: error: report failed: {exc}", file=sys.stderr)
        return 1
    print(f"report: {report}")
    return 0


#: ``icpcv power --help``: what the planner does, sentence by sentence
DESCRIPTION = " ".join((
    "Resample the run's monkeys (with their paired MAE differences of --model against the reference) into "
    "simulated studies of G monkeys and apply the verdict's rule to each (the monkey-level t interval of the MAE "
    "difference below 0 and the Holm-adjusted sign-flip p < --alpha).",
    "Report the share called better, with the smallest MAE reduction detectable with 80% power at the run's own "
    "number of monkeys.",
    "Prints the table, writes RUN_DIR/power.json and RUN_DIR/figures/power.png, and regenerates the report."))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("power", description=DESCRIPTION,
                              help="power of a new study of G monkeys, from a run's per-monkey differences")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run (or `icpcv analyze`) directory")
    p.add_argument("--model", default=DEFAULTS.model, help=f"model to plan for (default {DEFAULTS.model})")
    p.add_argument("--reference", default=DEFAULTS.reference, help="reference model (default: the run's)")
    p.add_argument("--monkeys", default=",".join(map(str, DEFAULTS.monkeys)),
                   help=f"study sizes, comma-separated (default {','.join(map(str, DEFAULTS.monkeys))})")
    p.add_argument("--effect", type=float, default=DEFAULTS.effect, metavar="MMHG",
                   help="MAE reduction to assume, mmHg (positive: the model better; default: the run's own)")
    p.add_argument("--alpha", type=float, default=DEFAULTS.alpha,
                   help=f"threshold of the adjusted sign-flip p; the interval is 1 - alpha (default {DEFAULTS.alpha:g})")
    p.add_argument("--n-comparisons", type=int, default=DEFAULTS.n_comparisons,
                   help="comparisons the p is adjusted for (Bonferroni, Holm's factor for the smallest p); "
                        "default: the run's own number of comparisons, as its verdict; 1: a study of the two "
                        "models on MAE alone")
    p.add_argument("--n-sim", type=int, default=DEFAULTS.n_sim,
                   help=f"simulated studies per size (default {DEFAULTS.n_sim})")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"seed of the resampling (default {DEFAULTS.seed})")
    p.set_defaults(func=cmd_power)
