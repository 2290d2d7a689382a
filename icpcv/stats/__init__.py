"""icpcv.stats: monkey-level statistics of out-of-fold ICP predictions.

The unit of evidence is the subject (monkey): every interval is a cluster
(subject-level) bootstrap or jackknife interval and every paired test is over
subjects. See docs/statistics.md and docs/calibration.md.

Public API
----------
analyze(predictions, reference="ols_iop", n_boot=10000, seed=0, ci_level=0.95, ci_method=None)
    -> AnalysisResult (attributes, summary(), to_dict() = stats.json; from_dict reads it back)
read_predictions(path), validate_predictions(frame)
write_stats(result, path)
analyze_study(predictions, ...)  # a study's table: the seed ensemble, analyze, training_variance, trending
leakage_summary(honest, leaky)   # the leakage audit's optimism per model
"""

from icpcv.errors import InputError
from icpcv.stats.analysis import DEFAULT_CI_METHOD, analyze
from icpcv.stats.io import read_predictions, validate_predictions, write_stats
from icpcv.stats.leakage import leakage_summary
from icpcv.stats.results import AnalysisResult, Comparison, Estimate, ModelStats
from icpcv.stats.study import analyze_study

__all__ = [
    "analyze",
    "analyze_study",
    "AnalysisResult",
    "Comparison",
    "Estimate",
    "ModelStats",
    "DEFAULT_CI_METHOD",
    "read_predictions",
    "validate_predictions",
    "write_stats",
    "leakage_summary",
    "InputError",
]
