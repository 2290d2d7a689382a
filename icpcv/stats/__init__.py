"""icpcv.stats: monkey-level statistics of out-of-fold ICP predictions.

The unit of evidence is the subject (monkey): every interval is a cluster
(subject-level) bootstrap or jackknife interval and every paired test is over
subjects. See docs/statistics.md and docs/calibration.md.

Public API
----------
analyze(predictions, reference="ols_iop", n_boot=10000, seed=0, ci_level=0.95, ci_method=None)
read_predictions(path)
write_stats(result, path)
cmd_analyze(args), cmd_calibrate(args)   # CLI entry points (argparse.Namespace)
"""

from icpcv.stats.analysis import DEFAULT_CI_METHOD, AnalysisResult, analyze
from icpcv.stats.commands import add_parsers, cmd_analyze, cmd_calibrate
from icpcv.stats.errors import InputError
from icpcv.stats.io import read_predictions, validate_predictions, write_stats

__all__ = [
    "analyze",
    "AnalysisResult",
    "DEFAULT_CI_METHOD",
    "read_predictions",
    "validate_predictions",
    "write_stats",
    "cmd_analyze",
    "cmd_calibrate",
    "add_parsers",
    "InputError",
]
