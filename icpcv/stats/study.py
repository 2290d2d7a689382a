"""The analysis of a whole study's predictions table, as ``icpcv run`` and ``icpcv analyze`` do it.

1. A table whose networks were trained several times per fold (a ``repeat`` column,
   :mod:`icpcv.stats.repeats`) is analysed on its **seed ensemble** (per model and scan, the
   mean of the repeats), and the analysis gains ``training_variance``: each repeat alone as a
   single-seed study, and the split of the difference's variance into monkey sampling and
   training noise. The verdict then says how many single seeds agree.
2. :func:`icpcv.stats.analyze` on that table (or on the plain table as it is).
3. ``trending`` (:mod:`icpcv.stats.trending`): does the prediction follow ICP when it changes
   within a monkey, on the four-quadrant concordance and polar statistics, when the table
   has IOP.

Each section goes into ``AnalysisResult.extra`` under its stats.json key, as its ``to_dict()``;
the report reads it back with the section's own ``from_dict``.
"""
from __future__ import annotations

import pandas as pd

from icpcv.errors import InputError
from icpcv.stats.analysis import analyze, verdict_comparison, verdict_sentences
from icpcv.stats.repeats import REPEAT_COLUMN, ensemble, training_variance, with_seed_agreement
from icpcv.stats.results import AnalysisResult
from icpcv.stats.trending import trending


def has_repeats(predictions: pd.DataFrame) -> bool:
    """The table has a ``repeat`` column with at least one value (some model was trained several times)."""
    if REPEAT_COLUMN not in predictions.columns:
        return False
    # a value is a repeat unless it is missing or blank text; an empty column on every row is a plain
    # table (pandas gives NaN, <NA> or "" for it depending on how it was read)
    return any(not (pd.isna(v) or (isinstance(v, str) and v.strip() == "")) for v in predictions[REPEAT_COLUMN])


def primary_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """The predictions the statistics speak of: with repeats (a ``repeat`` column with values), the seed
    ensemble (:func:`icpcv.stats.repeats.ensemble`); otherwise the table itself."""
    return ensemble(predictions) if has_repeats(predictions) else predictions


def analyze_study(predictions, *, reference: str = "ols_iop", n_boot: int = 10000, seed=0, ci_level: float = 0.95,
                  ci_method: str | None = None, audit_failed: bool = False, steps: pd.DataFrame | None = None,
                  unit: str = "mmHg") -> AnalysisResult:
    """The monkey-level analysis of a study: the ensemble of repeats when there are repeats,
    :func:`~icpcv.stats.analyze`, ``training_variance`` and ``trending``.

    ``steps`` (optional: ``scan_id, iop_step, icp_step``) names each scan's set pressure levels for
    the trending pairs; without it they come from the table's own ``iop_step``/``icp_step``
    columns, or from the pressures (:func:`icpcv.stats.trending.change_pairs`). The trending
    section's ``verdict_model`` is the model the MAE verdict speaks of.

    >>> from icpcv.stats.synthetic import synthetic_predictions
    >>> p = synthetic_predictions(n_subjects=8, seed=1)
    >>> res = analyze_study(p[p.model.isin(["ols_iop", "cnn"])], n_boot=200)
    >>> "training_variance" in res.extra, "trending" in res.extra
    (False, True)
    """
    table = pd.DataFrame(predictions)
    settings = dict(reference=reference, n_boot=n_boot, seed=seed, ci_level=ci_level, ci_method=ci_method)
    repeated = has_repeats(table)
    plain = primary_predictions(table)
    result = analyze(plain, audit_failed=audit_failed, unit=unit, **settings)
    if repeated:
        tv = training_variance(table, unit=unit, ensemble_result=result, **settings)
        result.extra["training_variance"] = tv.to_dict()
        if tv.measured and tv.verdict_suffix:  # after the sentence on the best model, before any others
            parts = verdict_sentences(result.comparisons, result.models, reference,
                                      n_subjects=result.n_subjects, ci_level=ci_level, unit=unit)
            result.verdict = with_seed_agreement(parts, tv.verdict_suffix)
    if "iop" in plain.columns or steps is not None:
        best = verdict_comparison(result.models, result.comparisons)
        try:
            result.extra["trending"] = trending(plain, reference=reference, seed=seed, ci_level=ci_level,
                                                steps=steps, verdict_model=best.model if best else None).to_dict()
        except InputError as exc:  # e.g. no IOP step has two ICP steps: the analysis stands without it
            result.warnings.append(f"Trending was not analysed: {exc}")
    return result
