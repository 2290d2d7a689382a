"""``icpcv analyze`` (monkey-level statistics of any predictions table) and ``icpcv calibrate``."""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from icpcv import __version__
from icpcv.errors import InputError
from icpcv.plausible import in_option_words
from icpcv.rundir import RunDir
from icpcv.stats.bootstrap import CI_METHODS
from icpcv.util import file_sha256, package_version
from icpcv.writable import check_inputs_kept, check_output_dir, check_output_file


def cmd_analyze(args) -> int:
    """Read predictions, write ``<out>/stats.json``, then the HTML report.

    ``args``: ``predictions`` (path), ``out`` (dir), ``reference``, ``n_boot``,
    ``seed``, ``ci_level``, ``ci_method`` (None = calibrated default) and,
    optionally, ``audit_failed``. Returns 0 on success, 2 on bad input,
    1 if the report could not be written (stats.json is kept).

    When ``out`` is a run directory (it has run.json) the report is the run's,
    with its cohort, fold plan and audit; only the run's own predictions.csv
    may be re-analysed into it (say with another reference), and a failed
    fold-plan audit of the run keeps its warning. A comparison directory
    likewise takes only its own predictions. Otherwise ``out`` becomes an analysis
    directory: ``analysis.json`` records the source table (path, sha256, rows)
    and the settings, and the report shows what a bare predictions table
    allows (statistics and figures), saying that its folds were not audited.
    """
    from icpcv.stats import read_predictions, write_stats  # lazy: start-up time (pandas, scipy)
    from icpcv.stats.repeats import validate_repeats  # lazy: start-up time
    from icpcv.stats.study import analyze_study, has_repeats  # lazy: start-up time

    out = RunDir(check_output_dir(args.out, what="analysis"))  # an unwritable --out, before any work
    # its own predictions.csv is read, not rewritten; any other input in a place analyze writes is refused
    check_inputs_kept(out.path, [args.predictions], keep=[out.predictions_csv])
    kind = out.kind if out.kind in ("run", "comparison") else None
    if kind and Path(args.predictions).resolve() != out.predictions_csv.resolve():
        # its report would show these statistics beside the cohort, folds and audit of other predictions
        print(f"error: {out.path} is a {kind} directory; analysing another table into it would mix its results "
              f"with foreign predictions. Use another --out, or re-analyse {out.predictions_csv} itself",
              file=sys.stderr)
        return 2
    audit_failed = bool(getattr(args, "audit_failed", False))
    steps = scans = None
    if kind == "run":  # a run's own audit travels with its numbers, and its cohort's pressure steps with trending
        from icpcv.cohort import read_steps  # lazy: start-up time (pandas)

        audit_failed = audit_failed or out.plan_audit_failed()
        steps = read_steps(out.cohort)
        scans = out.cohort.read_scans() if out.cohort.scans_csv.exists() else None  # the acquisition section
    try:
        preds = read_predictions(args.predictions, allow_repeats=True)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    subjects = sorted(set(preds["subject"]))
    if len(subjects) < 2:  # as `run` says it: monkey-level intervals and tests need two monkeys
        print(f"error: {args.predictions}: the predictions hold only 1 subject ({subjects[0]}); monkey-level "
              "statistics (intervals, sign-flip tests) need at least 2 monkeys", file=sys.stderr)
        return 2
    asked = getattr(args, "reference", None)
    models = sorted(set(preds["model"]))
    if asked is not None and asked not in models:  # an explicit reference that is not there: nothing to compare
        print(f"error: --reference {asked} is not a model of {args.predictions} (models: {', '.join(models)}); "
              "name one of them", file=sys.stderr)
        return 2
    settings = dict(
        reference=asked or "ols_iop",
        n_boot=getattr(args, "n_boot", 10000),
        seed=getattr(args, "seed", 0),
        ci_level=getattr(args, "ci_level", 0.95),
        ci_method=getattr(args, "ci_method", None),
        audit_failed=audit_failed,
    )
    try:
        if has_repeats(preds):  # the repeats' own checks, naming the file as well as the row and column
            validate_repeats(preds, source=Path(args.predictions).name)
        result = analyze_study(preds, steps=steps, scans=scans, **settings)
        if kind == "run":  # the run's own sections (prediction interval, audits, warnings), as `run` wrote them
            from icpcv.run.pipeline import add_run_context  # lazy: start-up time (torch)

            add_run_context(out, out.read_record(), preds, result, n_boot=settings["n_boot"], seed=settings["seed"],
                            ci_level=settings["ci_level"])
    except (InputError, ValueError) as exc:
        print(f"error: {in_option_words(exc)}", file=sys.stderr)  # --n-boot, not n_boot
        return 2
    out.path.mkdir(parents=True, exist_ok=True)
    path = write_stats(result, out.stats_json)
    # the report is a view of its folder: give it the predictions it shows, as analysed
    if Path(args.predictions).resolve() != out.predictions_csv.resolve():
        out.write_predictions(preds)
    if not out.run_json.exists():
        # no cohort, fold plan or audit to show: record what was analysed, for the report and for later
        out.write_analysis_meta(analysis_record(args.predictions, len(preds), settings))
    print(result.verdict)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {path}")

    from icpcv.report import write_report  # lazy: start-up time (matplotlib, seaborn)

    try:
        report = write_report(out.path)
    except Exception as exc:  # the report is someone else's; keep stats.json
        print(f"error: report failed: {exc}", file=sys.stderr)
        return 1
    print(f"report: {report}")
    return 0


def analysis_record(predictions, n_rows: int, settings: dict) -> dict:
    """``analysis.json`` of an analysis directory: the source table (as given and resolved, its
    sha256 so that a coauthor can tell which file was analysed, its rows) and the settings."""
    src = Path(predictions)
    return dict(kind="predictions",
                source=dict(path=str(predictions), resolved=str(src.resolve()), sha256=file_sha256(src),
                            n_rows=int(n_rows)),
                settings=dict(settings), icpcv=__version__,
                time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                environment=dict(python=platform.python_version(), numpy=package_version("numpy"),
                                 pandas=package_version("pandas"), scipy=package_version("scipy")))


def cmd_calibrate(args) -> int:
    """Run the calibration study and print (and optionally save) its table.

    ``args``: ``n_sim``, ``n_subjects`` (default 14), ``seed``, ``out``
    (optional: ``.csv`` -> CSV, anything else -> Markdown), ``n_boot``, ``workers``.
    """
    from icpcv.stats.calibrate import format_markdown, run_calibration  # lazy: start-up time

    if getattr(args, "out", None):  # an unwritable --out, before the simulations
        check_output_file(args.out, what="calibration table")
    table = run_calibration(
        n_sim=args.n_sim,
        n_subjects=getattr(args, "n_subjects", 14),
        seed=getattr(args, "seed", 0),
        n_boot=getattr(args, "n_boot", 999),
        workers=getattr(args, "workers", 1),
    )
    text = format_markdown(table)
    print(text)
    out = getattr(args, "out", None)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".csv":
            table.to_csv(out, index=False)
        else:
            out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


#: ``icpcv analyze --help``
DESCRIPTION = (
    "Analyse a long table of out-of-fold predictions (fold, subject, scan_id, model, y_true, y_pred[, iop]) from "
    "any model at the monkey level. Writes OUT/stats.json, a copy of the table as OUT/predictions.csv, "
    "OUT/analysis.json (the source file's sha256 and the settings) and the HTML report OUT/index.html with "
    "OUT/figures/*.png. In a run directory the report is the run's.")


def add_parser(subparsers) -> None:
    """Add the ``analyze`` and ``calibrate`` subcommands to an argparse subparsers object."""
    a = subparsers.add_parser("analyze", description=DESCRIPTION,
                              help="monkey-level statistics of out-of-fold predictions -> stats.json, index.html")
    a.add_argument("predictions", help="predictions table (.csv or .parquet)")
    a.add_argument("--out", required=True, help="output directory (stats.json, index.html go here)")
    a.add_argument("--reference", help="reference model, one of the table's (default ols_iop, when the table has it)")
    a.add_argument("--n-boot", dest="n_boot", type=int, default=10000,
                   help="subject-level bootstrap resamples (default 10000)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--ci-level", dest="ci_level", type=float, default=0.95)
    a.add_argument("--ci-method", dest="ci_method", choices=CI_METHODS + ("auto",), default=None,
                   help="interval method (default: 'auto', the per-quantity choice of the "
                        "calibration study, see docs/calibration.md)")
    a.add_argument("--audit-failed", dest="audit_failed", action="store_true",
                   help="record that the leakage audit failed (adds a warning)")
    a.set_defaults(func=cmd_analyze)

    c = subparsers.add_parser(
        "calibrate", help="simulation study of interval coverage and sign-flip test size/power")
    c.add_argument("--n-sim", dest="n_sim", type=int, default=1500,
                   help="simulated cohorts per scenario (default 1500: 42 s with --workers 2 on a 2-core machine)")
    c.add_argument("--n-subjects", dest="n_subjects", type=int, default=14)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="write the table here (.md or .csv)")
    c.add_argument("--n-boot", dest="n_boot", type=int, default=999,
                   help="bootstrap resamples per simulated cohort (default 999)")
    c.add_argument("--workers", type=int, default=2, help="parallel processes (joblib)")
    c.set_defaults(func=cmd_calibrate)
