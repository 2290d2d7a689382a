"""``icpcv report`` (regenerate the HTML of a run, comparison or analysis directory) and ``icpcv compare``."""
from __future__ import annotations

from pathlib import Path

from icpcv.stats.bootstrap import CI_METHODS
from icpcv.writable import check_report_dir


def _list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def cmd_report(args) -> int:
    from icpcv.report import write_report  # lazy: start-up time (matplotlib, seaborn)

    check_report_dir(args.run_dir)  # a read-only run directory, before any figure is drawn
    print(f"report: {write_report(Path(args.run_dir))}")
    return 0


def cmd_compare(args) -> int:
    from icpcv.report.compare import compare_runs  # lazy: start-up time (the statistics and the report)

    out = compare_runs(args.runs, args.out, names=_list(args.names), models=_list(args.models),
                       reference=args.reference, n_boot=args.n_boot, seed=args.seed, ci_level=args.ci_level,
                       ci_method=args.ci_method)
    print(f"report: {out}")
    return 0


def add_parser(subparsers) -> None:
    r = subparsers.add_parser("report", help="regenerate the HTML report of a run, comparison or analysis directory",
                              description="Write RUN_DIR/index.html (one self-contained file) and "
                                          "RUN_DIR/figures/*.png from a finished run directory (or a comparison "
                                          "directory made by `icpcv compare`, or an analysis directory made by "
                                          "`icpcv analyze PREDICTIONS --out DIR`). Reads stats.json; recomputes "
                                          "nothing.")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.set_defaults(func=cmd_report)

    c = subparsers.add_parser("compare", help="paired comparison of runs made on the same fold plan",
                              description="Stack the out-of-fold predictions of runs made on the same fold plan "
                                          "(e.g. warm vs cold start, two CNN depths), name each model RUN:MODEL, "
                                          "and analyse them together: monkey-level paired intervals and sign-flip "
                                          "tests against a reference. Runs whose fold plans differ are refused.")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    c.add_argument("--out", required=True, help="folder for the comparison (stats.json, figures, index.html)")
    c.add_argument("--names", help="comma-separated run names (default: the folders' names)")
    c.add_argument("--models", help="comma-separated models taken from every run (default: the models every "
                                    "run has whose predictions differ between runs)")
    c.add_argument("--reference", help="RUN:MODEL (or MODEL of the first run) that the others are compared "
                                       "against (default: the first run's copy of the first compared model)")
    c.add_argument("--n-boot", type=int, help="bootstrap resamples (default: the first run's)")
    c.add_argument("--seed", type=int, help="seed of the resampling (default: the first run's)")
    c.add_argument("--ci-level", type=float, help="confidence level (default: the first run's)")
    c.add_argument("--ci-method", choices=CI_METHODS + ("auto",),
                   help="interval method (default: 'auto', the per-quantity choice of the calibration study)")
    c.set_defaults(func=cmd_compare)
