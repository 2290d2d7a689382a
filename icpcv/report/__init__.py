"""The HTML report: a view of the run directory and stats.json; it never recomputes statistics.

``write_report(run_dir)`` writes ``run_dir/index.html`` (one self-contained file, figures embedded
as data URIs) and every figure as a PNG under ``run_dir/figures/``. A comparison directory made
by ``icpcv compare``, and an analysis directory made by ``icpcv analyze PREDICTIONS --out DIR``
outside any run, are rendered the same way.
"""
from __future__ import annotations

from pathlib import Path

from icpcv.report.build import render_compare, render_predictions, render_run
from icpcv.report.rundata import load_compare, load_predictions_dir, load_run
from icpcv.rundir import RunDir


def write_report(run_dir) -> Path:
    """Render ``run_dir/index.html`` from the run (or comparison, or analysis) directory; returns its path.

    Raises RunDirError naming the missing file when ``run_dir`` is not a complete run.
    """
    run = RunDir(run_dir)
    kind = run.kind
    if kind == "comparison":
        return run.write_report_html(render_compare(load_compare(run.path)))
    if kind == "analysis":
        return run.write_report_html(render_predictions(load_predictions_dir(run.path)))
    return run.write_report_html(render_run(load_run(run.path)))


__all__ = ["write_report"]
