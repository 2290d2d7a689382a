"""How much of a network's attribution falls in one anatomical region, with a monkey-level interval.

Pure statistics on arrays (no torch): the per-scan sums come from :mod:`icpcv.explain.scoring`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icpcv.stats import bootstrap
from icpcv.stats.inference import signflip_test
from icpcv.util import natural_sorted, to_jsonable

#: interval methods that need no per-resample standard error
REGION_SHARE_CI_METHODS = ("t", "percentile", "bca")


@dataclass
class RegionShareResult:
    """Result of :func:`region_share`; ``to_dict()`` is its JSON, ``summary()`` its sentence and table."""

    region: str
    n_subjects: int
    n_scans: int
    n_scans_without_attribution: int
    attribution_share: float
    attribution_share_ci: tuple[float, float]
    volume_share: float
    enrichment: float
    enrichment_ci: tuple[float, float]
    difference: float
    difference_ci: tuple[float, float]
    p_value: float
    ci_method: str
    ci_level: float
    n_boot: int
    seed: int
    per_subject: pd.DataFrame = field(repr=False)
    model: str | None = None
    method: str | None = None

    @property
    def label(self) -> str:
        parts = [p for p in (self.model, self.method and self.method.replace("_", " ")) if p]
        return parts[0] + (f" ({parts[1]})" if len(parts) > 1 else "") if parts else "the maps"

    def sentence(self) -> str:
        level = f"{round(self.ci_level * 100):g}%"
        if not np.isfinite(self.attribution_share):
            return (f"{self.label}: no scan had any attribution (every map is zero: the network's output does "
                    f"not depend on the scan), so nothing can be said about the {self.region}.")
        lo, hi = self.enrichment_ci
        if np.isfinite(lo) and lo > 1:
            verdict = "more than its share of the volume"
        elif np.isfinite(hi) and hi < 1:
            verdict = "less than its share of the volume"
        else:
            verdict = "not clearly different from its share of the volume"
        return (f"{self.label}: {self.attribution_share:.1%} of the absolute attribution falls in the {self.region}, "
                f"which is {self.volume_share:.1%} of the volume: {self.enrichment:.2f} times its volume share "
                f"({level} CI {_num(lo)} to {_num(hi)}), {verdict}; difference {100 * self.difference:+.1f} "
                f"percentage points ({level} CI {100 * self.difference_ci[0]:+.1f} to "
                f"{100 * self.difference_ci[1]:+.1f}), sign-flip p {_p(self.p_value)} "
                f"({self.n_subjects} monkeys, {self.n_scans} scans{self._left_out()}; {self.ci_method} interval).")

    def _left_out(self) -> str:
        k = self.n_scans_without_attribution
        return "" if not k else f"; {k} scan{'s' if k > 1 else ''} with an all-zero map left out"

    def summary(self) -> str:
        lines = [self.sentence(), "", "| monkey | scans | attribution share | volume share | ratio |",
                 "| --- | --- | --- | --- | --- |"]
        for r in self.per_subject.itertuples(index=False):
            ratio = r.attribution_share / r.volume_share if r.volume_share > 0 else float("nan")
            lines.append(f"| {r.subject} | {r.n_scans} | {r.attribution_share:.1%} | {r.volume_share:.1%} | "
                         f"{_num(ratio)} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return to_jsonable(dict(
            model=self.model, method=self.method, region=self.region,
            n_subjects=self.n_subjects, n_scans=self.n_scans,
            n_scans_without_attribution=self.n_scans_without_attribution,
            attribution_share=dict(estimate=self.attribution_share, ci=list(self.attribution_share_ci)),
            volume_share=self.volume_share,
            enrichment=dict(estimate=self.enrichment, ci=list(self.enrichment_ci)),
            difference=dict(estimate=self.difference, ci=list(self.difference_ci)),
            p_signflip=self.p_value, ci_method=self.ci_method, ci_level=self.ci_level, n_boot=self.n_boot,
            seed=self.seed, sentence=self.sentence(),
            per_subject=self.per_subject.to_dict("records"),
        ))


def _num(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def _p(p) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def region_share(subject, attribution_in, attribution_total, voxels_in, voxels_total, *, region: str = "lamina",
                 model: str | None = None, method: str | None = None, n_boot: int = 10_000, seed: int = 0,
                 ci_level: float = 0.95, ci_method: str = "t") -> RegionShareResult:
    """Share of the absolute attribution inside a region, against the share of the volume it occupies.

    For scan :math:`i` of monkey :math:`g` with attribution map :math:`A_i` and region
    :math:`R_i` (its labelled voxels) in a volume :math:`V`:

    .. math::

        a_i = \\frac{\\sum_{v \\in R_i} |A_i(v)|}{\\sum_{v \\in V} |A_i(v)|}, \\qquad
        s_i = \\frac{|R_i|}{|V|}, \\qquad
        \\bar a_g = \\operatorname{mean}_{i \\in g} a_i, \\quad \\bar s_g = \\operatorname{mean}_{i \\in g} s_i,

        A = \\frac1G \\sum_g \\bar a_g, \\quad S = \\frac1G \\sum_g \\bar s_g, \\qquad
        \\text{enrichment } E = A / S, \\qquad \\text{difference } D = A - S.

    Each monkey counts once, however many of its scans were mapped. :math:`E = 1` (:math:`D = 0`)
    is what a map spread evenly over the volume gives; :math:`E > 1`: the network's attribution
    concentrates in the region. Scans whose map is zero everywhere have no share and are left out
    (counted in ``n_scans_without_attribution``).

    Intervals resample **monkeys** (:mod:`icpcv.stats.bootstrap`): ``t`` (default) is
    :math:`\\hat\\theta \\pm t_{G-1}\\,\\widehat{se}_{jack}` with the leave-one-monkey-out
    jackknife standard error (for D, a mean over monkeys, this is exactly the one-sample t
    interval of the :math:`\\bar a_g - \\bar s_g`); ``percentile`` and ``bca`` use ``n_boot``
    cluster-bootstrap resamples drawn from ``numpy.random.default_rng(seed)``. The p-value is the
    two-sided sign-flip test over monkeys of :math:`\\bar a_g - \\bar s_g` (H0: the attribution
    share equals the volume share; :func:`icpcv.stats.inference.signflip_test`).

    Parameters
    ----------
    subject : array of monkey labels, one per scan.
    attribution_in, attribution_total : sums of absolute attribution in the region and in the volume.
    voxels_in, voxels_total : voxels in the region and in the volume.

    Returns
    -------
    RegionShareResult

    References
    ----------
    Arras L, Osman A, Samek W (2022). CLEVR-XAI: a benchmark dataset for the ground truth evaluation
    of neural network explanations. Information Fusion 81:14-40 (relevance mass accuracy: the share of
    attribution inside the ground-truth mask).
    Field CA, Welsh AH (2007). Bootstrapping clustered data. JRSS B 69:369-390.

    Examples
    --------
    >>> from icpcv.stats.attribution import region_share
    >>> r = region_share(["1", "1", "2", "3"], [30, 50, 20, 40], [100, 100, 100, 100],
    ...                  [5, 5, 5, 5], [100, 100, 100, 100], region="lamina")
    >>> round(r.attribution_share, 3), round(r.volume_share, 3), round(r.enrichment, 2)
    (0.333, 0.05, 6.67)
    """
    if ci_method not in REGION_SHARE_CI_METHODS:
        raise ValueError(f"ci_method {ci_method!r}: choose from {', '.join(REGION_SHARE_CI_METHODS)}")
    subj = np.asarray(subject).astype(str)
    a_in, a_tot, v_in, v_tot = (np.asarray(x, dtype=float) for x in
                                (attribution_in, attribution_total, voxels_in, voxels_total))
    n = len(subj)
    if not all(len(x) == n for x in (a_in, a_tot, v_in, v_tot)):
        raise ValueError("region_share: subject and the four sums need one value per scan each")
    if np.any(a_in < 0) or np.any(a_in > a_tot * (1 + 1e-6)) or np.any(v_in > v_tot) or np.any(v_tot <= 0):
        raise ValueError("region_share: sums must satisfy 0 <= attribution_in <= attribution_total and "
                         "voxels_in <= voxels_total > 0 (absolute attribution, voxel counts)")
    has = a_tot > 0
    frame = pd.DataFrame(dict(subject=subj[has], a=a_in[has] / a_tot[has], s=v_in[has] / v_tot[has]))
    per = (frame.groupby("subject", sort=False)
           .agg(n_scans=("a", "size"), attribution_share=("a", "mean"), volume_share=("s", "mean")))
    per = per.loc[natural_sorted(per.index)].reset_index()
    G = len(per)
    nan2 = (float("nan"), float("nan"))
    common = dict(region=region, n_subjects=G, n_scans=int(has.sum()), n_scans_without_attribution=int((~has).sum()),
                  ci_method=ci_method, ci_level=ci_level, n_boot=int(n_boot), seed=int(seed), per_subject=per,
                  model=model, method=method)
    if G == 0:
        return RegionShareResult(attribution_share=float("nan"), attribution_share_ci=nan2,
                                 volume_share=float(np.mean(v_in / v_tot)) if n else float("nan"),
                                 enrichment=float("nan"), enrichment_ci=nan2, difference=float("nan"),
                                 difference_ci=nan2, p_value=float("nan"), **common)
    a_g = per["attribution_share"].to_numpy()
    s_g = per["volume_share"].to_numpy()
    A, S = a_g.mean(), s_g.mean()

    def estimands(a, s):  # attribution share, enrichment, difference
        return np.stack([a, a / s, a - s], axis=-1)

    rng = np.random.default_rng(seed)
    counts = bootstrap.counts_from_indices(bootstrap.resample_indices(G, n_boot, rng), G)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = estimands(counts @ a_g / G, counts @ s_g / G)
        jack_a = (a_g.sum() - a_g) / (G - 1) if G > 1 else np.full(1, np.nan)
        jack_s = (s_g.sum() - s_g) / (G - 1) if G > 1 else np.full(1, np.nan)
        jack = estimands(jack_a, jack_s)
    est = estimands(np.array(A), np.array(S))
    out = bootstrap.BootstrapOutput(estimate=est, boot=boot, jack=[jack[:, j] for j in range(3)], n_boot=int(n_boot),
                                    n_active=np.full(3, G))
    ci = [tuple(bootstrap.interval(out, j, ci_method, ci_level)) for j in range(3)]
    p = signflip_test(a_g - s_g)["p"]
    return RegionShareResult(attribution_share=float(A), attribution_share_ci=ci[0], volume_share=float(S),
                             enrichment=float(A / S), enrichment_ci=ci[1], difference=float(A - S),
                             difference_ci=ci[2], p_value=float(p), **common)


@dataclass
class RegionShareComparison:
    """Result of :func:`compare_region_shares`: two sets of maps of the same scans, paired by monkey."""

    region: str
    label: str
    reference_label: str
    n_subjects: int
    difference: float  # mean over monkeys of (share - reference share)
    difference_ci: tuple[float, float]
    ratio: float  # attribution share / reference attribution share (means over monkeys)
    ratio_ci: tuple[float, float]
    p_value: float
    ci_level: float
    per_subject: pd.DataFrame = field(repr=False)  # subject, share, reference_share

    def sentence(self) -> str:
        level = f"{round(self.ci_level * 100):g}%"
        if not np.isfinite(self.difference):
            return (f"{self.label} against {self.reference_label}: no monkey has maps from both, so they cannot be "
                    "compared.")
        lo, hi = self.difference_ci
        verdict = ("more" if np.isfinite(lo) and lo > 0 else "less" if np.isfinite(hi) and hi < 0 else
                   "not clearly more or less")
        return (f"{self.label} puts {verdict} of its absolute attribution in the {self.region} than "
                f"{self.reference_label}: {100 * self.difference:+.1f} percentage points ({level} CI "
                f"{100 * lo:+.1f} to {100 * hi:+.1f}), {_num(self.ratio)} times as much ({level} CI "
                f"{_num(self.ratio_ci[0])} to {_num(self.ratio_ci[1])}), sign-flip p {_p(self.p_value)} "
                f"({self.n_subjects} monkeys, paired).")

    def summary(self) -> str:
        return self.sentence()

    def to_dict(self) -> dict:
        return to_jsonable(dict(region=self.region, label=self.label, reference=self.reference_label,
                                n_subjects=self.n_subjects,
                                difference=dict(estimate=self.difference, ci=list(self.difference_ci)),
                                ratio=dict(estimate=self.ratio, ci=list(self.ratio_ci)), p_signflip=self.p_value,
                                ci_level=self.ci_level, sentence=self.sentence(),
                                per_subject=self.per_subject.to_dict("records")))


def compare_region_shares(result: RegionShareResult, reference: RegionShareResult, *,
                          ci_level: float | None = None) -> RegionShareComparison:
    """Paired comparison over monkeys of two :class:`RegionShareResult` of the same region, e.g. a trained
    network's maps against those of its randomised copy on the same scans.

    With :math:`\\bar a_g` and :math:`\\bar r_g` monkey g's attribution shares under the two (monkeys with
    both), :math:`d_g = \\bar a_g - \\bar r_g`:

    .. math::

        \\Delta = \\frac1G \\sum_g d_g \\quad (\\text{interval } \\Delta \\pm t_{G-1}\\, s_d / \\sqrt G), \\qquad
        Q = \\frac{\\sum_g \\bar a_g}{\\sum_g \\bar r_g} \\quad (\\text{interval } Q \\pm t_{G-1}\\,
        \\widehat{se}_{jack}),

        p = \\text{two-sided sign-flip test of the } d_g \\text{ (H0: no difference)}.

    A randomised network's maps show what a method gives from the input alone (its contrast, edges):
    a trained network that reads the lamina must put more there than its randomised copy, not only more
    than the lamina's share of the volume.

    Example
    -------
    >>> from icpcv.stats.attribution import compare_region_shares, region_share
    >>> subj, tot, vox = ["1", "2", "3", "4"], [100] * 4, [1000] * 4
    >>> trained = region_share(subj, [20, 25, 30, 22], tot, [20] * 4, vox, model="cnn")
    >>> noise = region_share(subj, [4, 5, 3, 4], tot, [20] * 4, vox, model="cnn_randomised")
    >>> c = compare_region_shares(trained, noise)
    >>> round(c.difference, 4), round(c.ratio, 2), c.p_value
    (0.2025, 6.06, 0.125)
    """
    if result.region != reference.region:
        raise ValueError(f"cannot compare shares of different regions ({result.region} vs {reference.region})")
    level = result.ci_level if ci_level is None else ci_level
    both = result.per_subject.merge(reference.per_subject, on="subject", suffixes=("", "_reference"))
    both = both.rename(columns={"attribution_share": "share", "attribution_share_reference": "reference_share"})
    both = both[["subject", "share", "reference_share"]]
    G = len(both)
    nan2 = (float("nan"), float("nan"))
    label = result.label
    reference_label = reference.label
    if G == 0:
        return RegionShareComparison(result.region, label, reference_label, 0, float("nan"), nan2, float("nan"), nan2,
                                     float("nan"), level, both)
    a, r = both["share"].to_numpy(float), both["reference_share"].to_numpy(float)
    d = a - r
    delta, ratio = float(d.mean()), float(a.sum() / r.sum()) if r.sum() > 0 else float("nan")
    if G > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            jack_ratio = (a.sum() - a) / (r.sum() - r)
            jack_delta = (d.sum() - d) / (G - 1)
        ci_delta = bootstrap.t_interval(delta, jack_delta, level)
        ci_ratio = bootstrap.t_interval(ratio, jack_ratio, level)
    else:
        ci_delta = ci_ratio = nan2
    return RegionShareComparison(result.region, label, reference_label, G, delta, tuple(ci_delta), ratio,
                                 tuple(ci_ratio), float(signflip_test(d)["p"]), level, both)


def calibrate_region_share(*, n_sims: int = 1000, n_subjects: int = 14, n_scans: int = 8, n_boot: int = 2000,
                           ci_level: float = 0.95, seed: int = 2026, methods=REGION_SHARE_CI_METHODS) -> pd.DataFrame:
    """Coverage of :func:`region_share`'s intervals in a simulation whose truth is known.

    Per cohort: each monkey's attribution share :math:`\\bar a_g \\sim \\text{Beta}(2, 8)` (mean 0.2,
    right-skewed), its volume share :math:`\\bar s_g \\sim N(0.022, 0.003)` (the lamina band of the small
    phantom), ``n_scans`` scans per monkey scattered around :math:`\\bar a_g` (sd 0.02) with their mean
    kept at :math:`\\bar a_g`. The targets are the population values :math:`E = 0.2 / 0.022` and
    :math:`D = 0.2 - 0.022`. Returns one row per method: the share of intervals covering each target and
    its Monte Carlo standard error.
    """
    rng = np.random.default_rng(seed)
    a_mean, s_mean = 0.2, 0.022
    true_e, true_d = a_mean / s_mean, a_mean - s_mean
    G, voxels = n_subjects, 19200
    subject = np.repeat([str(g + 1) for g in range(G)], n_scans)
    hits = {m: [0, 0] for m in methods}
    for sim in range(n_sims):
        a_g = rng.beta(2, 8, G)
        s_g = np.clip(rng.normal(s_mean, 0.003, G), 0.005, None)
        scatter = rng.normal(0, 0.02, (G, n_scans))
        a_i = np.clip(a_g[:, None] + scatter - scatter.mean(axis=1, keepdims=True), 0, 1).ravel()
        v_in = np.round(np.repeat(s_g, n_scans) * voxels)
        for m in methods:
            r = region_share(subject, a_i, np.ones(G * n_scans), v_in, np.full(G * n_scans, voxels), ci_method=m,
                             ci_level=ci_level, n_boot=n_boot if m != "t" else 1, seed=sim)
            hits[m][0] += r.enrichment_ci[0] <= true_e <= r.enrichment_ci[1]
            hits[m][1] += r.difference_ci[0] <= true_d <= r.difference_ci[1]
    mc_se = float(np.sqrt(ci_level * (1 - ci_level) / n_sims))
    return pd.DataFrame([dict(method=m, enrichment_coverage=e / n_sims, difference_coverage=d / n_sims,
                              mc_se=mc_se, n_sims=n_sims, n_subjects=G) for m, (e, d) in hits.items()])


__all__ = ["region_share", "RegionShareResult", "REGION_SHARE_CI_METHODS", "calibrate_region_share",
           "compare_region_shares", "RegionShareComparison"]


if __name__ == "__main__":
    print(calibrate_region_share().to_string(index=False))
