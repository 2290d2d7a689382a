"""Result objects of the analysis, in the statsmodels spirit: attributes, ``summary()``, ``to_dict()``.

:func:`icpcv.stats.analyze` returns an :class:`AnalysisResult`; ``to_dict()`` is the content of
``stats.json`` (schema in docs/statistics.md) and :meth:`AnalysisResult.from_dict` reads it back,
so the report and the notebooks work with the same attributes as the code that computed them.
Values that could not be computed are NaN in memory and ``null`` in the JSON.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

from icpcv.util import fmt_num, fmt_p, to_jsonable


def _nan(x):
    return float("nan") if x is None else x


class _Record:
    """Dataclass helpers: ``to_dict`` in field order (nested records too), tolerant ``from_dict``."""

    _nested: ClassVar[dict[str, type]] = {}
    _nested_maps: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            if f.metadata.get("internal"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, _Record):
                v = v.to_dict()
            elif isinstance(v, dict) and f.name in self._nested_maps:
                v = {k: x.to_dict() for k, x in v.items()}
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict | None, **extra):
        d = dict(d or {})
        kw = {}
        for f in fields(cls):
            if f.name in extra or f.metadata.get("internal"):
                continue
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name in cls._nested:
                v = cls._nested[f.name].from_dict(v)
            elif f.name in cls._nested_maps:
                v = {k: cls._nested_maps[f.name].from_dict(x) for k, x in (v or {}).items()}
            kw[f.name] = v
        return cls(**kw, **extra)


def _ci_text(ci, digits=2) -> str:
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None or not all(math.isfinite(v) for v in ci):
        return "n/a"
    return f"{fmt_num(ci[0], digits)} to {fmt_num(ci[1], digits)}"


class _Interval:
    """``lower`` and ``upper`` of a record's ``ci`` (NaN where there is none)."""

    ci: list | None

    @property
    def lower(self) -> float:
        return _nan(self.ci[0]) if self.ci else float("nan")

    @property
    def upper(self) -> float:
        return _nan(self.ci[1]) if self.ci else float("nan")


@dataclass
class Estimate(_Interval, _Record):
    """A point estimate with its monkey-level interval and the interval's method."""

    estimate: float = float("nan")
    ci: list | None = None
    method: str | None = None

    def text(self, digits: int = 2) -> str:
        return f"{fmt_num(self.estimate, digits, 'n/a')} ({_ci_text(self.ci, digits)})"


@dataclass
class ProportionalBias(_Record):
    """OLS of the difference on the mean of the two methods (Bland & Altman 1999, 3.2)."""

    slope: float = float("nan")
    intercept: float = float("nan")
    ci: list | None = None  # treats scans as independent (too narrow with repeated scans)
    p: float = float("nan")
    regressor: str = "mean of the two methods"
    ci_cluster: list | None = None  # the monkey-level interval
    ci_cluster_method: str | None = None


@dataclass
class BlandAltman(_Record):
    """Classic limits of agreement (:func:`icpcv.stats.agreement.bland_altman`)."""

    _nested: ClassVar = {"proportional_bias": ProportionalBias}
    n: int = 0
    multiplier: float = 1.96
    bias: float = float("nan")
    sd: float = float("nan")
    loa: list | None = None
    loa_ci: list | None = None
    bias_ci: list | None = None
    proportional_bias: ProportionalBias = field(default_factory=ProportionalBias)
    note: str | None = None


@dataclass
class BlandAltmanRepeated(_Record):
    """Limits of agreement with repeated scans per monkey (:func:`icpcv.stats.agreement.bland_altman_repeated`)."""

    n: int = 0
    n_subjects: int = 0
    multiplier: float = 1.96
    bias: float = float("nan")
    sd: float = float("nan")
    loa: list | None = None
    sd_within: float = float("nan")
    sd_between: float = float("nan")


@dataclass
class RMCorr(_Record):
    """Repeated-measures correlation of prediction and measurement (:func:`icpcv.stats.agreement.rmcorr`)."""

    r: float = float("nan")
    dof: int = 0
    p: float = float("nan")
    ci: list | None = None
    n: int = 0
    n_subjects: int = 0


@dataclass
class SubjectError(_Record):
    """One monkey's out-of-fold errors: mean absolute error, mean error (bias), number of scans."""

    mae: float = float("nan")
    bias: float = float("nan")
    n: int = 0


@dataclass
class ErrorDecomposition(_Record):
    """The MSE split into a constant offset per monkey (between) and what is left within monkeys."""

    mse: float = float("nan")
    between_subject: float = float("nan")
    within_subject: float = float("nan")
    between_fraction: float = float("nan")
    within_fraction: float = float("nan")
    global_bias_sq: float = float("nan")
    offset_spread: float = float("nan")
    within_subject_correlation: float = float("nan")
    within_subject_correlation_ci: list | None = None


#: the metrics of a model with a monkey-level interval, in stats.json's order
MODEL_METRICS = ("mae", "rmse", "bias", "r2", "pearson_r", "mae_subject_mean")


@dataclass
class ModelStats(_Record):
    """One model's out-of-fold statistics (``stats.json`` ``models.<name>``)."""

    _nested: ClassVar = {**{m: Estimate for m in MODEL_METRICS}, "bland_altman": BlandAltman,
                         "bland_altman_repeated": BlandAltmanRepeated, "rmcorr": RMCorr,
                         "decomposition": ErrorDecomposition}
    _nested_maps: ClassVar = {"per_subject": SubjectError}
    name: str = field(default="", metadata={"internal": True})
    n_scans: int = 0
    n_subjects: int = 0
    mae: Estimate = field(default_factory=Estimate)
    rmse: Estimate = field(default_factory=Estimate)
    bias: Estimate = field(default_factory=Estimate)
    r2: Estimate = field(default_factory=Estimate)
    pearson_r: Estimate = field(default_factory=Estimate)
    mae_subject_mean: Estimate = field(default_factory=Estimate)
    bland_altman: BlandAltman = field(default_factory=BlandAltman)
    bland_altman_repeated: BlandAltmanRepeated = field(default_factory=BlandAltmanRepeated)
    rmcorr: RMCorr = field(default_factory=RMCorr)
    per_subject: dict[str, SubjectError] = field(default_factory=dict)
    decomposition: ErrorDecomposition = field(default_factory=ErrorDecomposition)

    def metric(self, name: str) -> Estimate:
        return getattr(self, name)

    def summary(self) -> str:
        rows = [f"{self.name}: {self.n_scans} scans of {self.n_subjects} monkeys"]
        rows += [f"  {m:<17} {self.metric(m).text()}" for m in MODEL_METRICS]
        rows.append(f"  {'rmcorr':<17} {fmt_num(self.rmcorr.r, 3, 'n/a')} ({_ci_text(self.rmcorr.ci, 3)})")
        return "\n".join(rows)


@dataclass
class Comparison(_Interval, _Record):
    """A model against the reference on the scans both predicted (``stats.json`` ``comparisons[]``).

    ``delta`` is model minus reference (negative: the model's error is lower), with a
    monkey-level interval ``ci``; ``p_signflip`` the exact (or Monte Carlo) sign-flip p over
    monkeys; ``p_adjusted`` Holm-adjusted across all comparisons of the analysis.
    """

    model: str = ""
    reference: str = ""
    metric: str = "mae"
    delta: float = float("nan")
    ci: list | None = None
    p_signflip: float = float("nan")
    p_adjusted: float | None = None
    estimate_model: float = float("nan")
    estimate_reference: float = float("nan")
    n_subjects: int = 0
    n_scans: int = 0
    signflip_method: str | None = None
    signflip_statistic: float = float("nan")
    ci_method: str | None = None

    def better(self, alpha: float = 0.05) -> bool:
        """The verdict's rule: interval entirely below zero and Holm-adjusted p below ``alpha``."""
        p = self.p_adjusted
        return math.isfinite(self.upper) and self.upper < 0 and p is not None and math.isfinite(p) and p < alpha

    def worse(self, alpha: float = 0.05) -> bool:
        """Clearly worse: interval entirely above zero and Holm-adjusted p below ``alpha``."""
        p = self.p_adjusted
        return math.isfinite(self.lower) and self.lower > 0 and p is not None and math.isfinite(p) and p < alpha


@dataclass
class AnalysisResult(_Record):
    """Result of :func:`icpcv.stats.analyze`; ``to_dict()`` is the content of stats.json.

    Sections that a run adds beside the analysis (``scan_split_audit``, ...) are kept in
    ``extra`` and written after the analysis's own keys.
    """

    _nested_maps: ClassVar = {"models": ModelStats}
    n_subjects: int = 0
    n_scans: int = 0
    n_rows: int = 0
    subjects: list = field(default_factory=list)
    ci_level: float = 0.95
    ci_method: str | None = None
    ci_methods: dict = field(default_factory=dict)
    reference: str | None = None
    n_boot: int | None = None
    seed: object = None
    unit: str = "mmHg"
    resampling_unit: str = "subject"
    models: dict[str, ModelStats] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    #: issue 19: scan models against the best nuisance baseline (``reference`` = its name), same Holm family
    nuisance_comparisons: list[Comparison] = field(default_factory=list)
    verdict: str = ""
    warnings: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict, metadata={"internal": True})

    def to_dict(self) -> dict:
        """JSON-ready copy: plain floats/ints/str/lists/dicts, NaN -> None."""
        out = super().to_dict()
        out["comparisons"] = [c.to_dict() for c in self.comparisons]
        out["nuisance_comparisons"] = [c.to_dict() for c in self.nuisance_comparisons]
        out.update(self.extra)
        return to_jsonable(out)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AnalysisResult":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        res = super().from_dict({k: v for k, v in d.items() if k not in ("comparisons", "nuisance_comparisons")},
                                comparisons=[Comparison.from_dict(c) for c in d.get("comparisons") or []],
                                nuisance_comparisons=[Comparison.from_dict(c)
                                                      for c in d.get("nuisance_comparisons") or []],
                                extra={k: v for k, v in d.items() if k not in known})
        for name, m in res.models.items():
            m.name = name
        return res

    @property
    def ci_pct(self) -> str:
        return f"{round(self.ci_level * 100):g}%"

    def comparison(self, model: str, metric: str = "mae") -> Comparison | None:
        return next((c for c in self.comparisons if c.model == model and c.metric == metric), None)

    def summary(self) -> str:
        """A text table: each model's metrics, the comparisons against the reference, the verdict."""
        lines = [f"icpcv analysis: {self.n_subjects} monkeys, {self.n_scans} scans; {self.ci_pct} intervals "
                 f"from {self.n_boot} monkey-level resamples; reference {self.reference}", ""]
        head = f"{'model':<16}{'scans':>6}  " + "  ".join(f"{m:<22}" for m in ("MAE", "RMSE", "bias"))
        lines += [head, "-" * len(head)]
        for name, m in self.models.items():
            lines.append(f"{name:<16}{m.n_scans:>6}  " + "  ".join(f"{m.metric(k).text():<22}"
                                                                  for k in ("mae", "rmse", "bias")))
        if self.comparisons:
            lines += ["", f"{'model - reference':<22}{'metric':<7}{'delta':>8}  {'interval':<18}{'p':>8}{'Holm p':>9}"]
            for c in self.comparisons:
                lines.append(f"{c.model:<22}{c.metric:<7}{fmt_num(c.delta, 2, 'n/a'):>8}  {_ci_text(c.ci):<18}"
                             f"{fmt_p(c.p_signflip, 'n/a'):>8}{fmt_p(c.p_adjusted, 'n/a'):>9}")
        lines += ["", self.verdict]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------- issue 19: the acquisition section


@dataclass
class Association(_Record):
    """A covariate's within-monkey association with a pressure (:func:`icpcv.stats.acquisition.within_monkey_association`).

    ``r`` is the repeated-measures correlation; ``ci`` its Fisher-z interval (scans treated as
    independent within monkeys, as the rmcorr package computes it); ``ci_monkey`` the monkey-level
    interval (percentile of the cluster bootstrap over monkeys), the one the section's sentences use.
    """

    r: float = float("nan")
    dof: int = 0
    p: float = float("nan")
    ci: list | None = None
    ci_monkey: list | None = None
    n: int = 0
    n_subjects: int = 0  # monkeys in which the covariate and the pressure both vary

    def excludes_zero(self) -> bool:
        ci = self.ci_monkey
        return bool(ci and ci[0] is not None and ci[1] is not None and (ci[0] > 0 or ci[1] < 0))


@dataclass
class CovariateAssociation(_Record):
    """One acquisition covariate against ICP and IOP (``stats.json`` ``acquisition.covariates.<name>``)."""

    _nested: ClassVar = {"icp": Association, "iop": Association}
    label: str = ""
    n_scans: int = 0  # scans with a value
    icp: Association = field(default_factory=Association)
    iop: Association = field(default_factory=Association)


@dataclass
class AcquisitionResult(_Record):
    """``stats.json`` ``acquisition`` (:func:`icpcv.stats.acquisition.acquisition_section`)."""

    _nested_maps: ClassVar = {"covariates": CovariateAssociation}
    n_subjects: int = 0
    n_scans: int = 0
    ci_level: float = 0.95
    n_boot: int = 0
    per_monkey: dict = field(default_factory=dict)  # subject -> {n_scans, protocols{}, eyes{}, sessions}
    covariates: dict[str, CovariateAssociation] = field(default_factory=dict)
    mixed_protocols: list = field(default_factory=list)  # monkeys scanned with more than one protocol
    statements: list = field(default_factory=list)  # the section's sentences, computed with it
    source: str = ""  # where the intensity statistics came from

    @property
    def ci_pct(self) -> str:
        return f"{round(self.ci_level * 100):g}%"
