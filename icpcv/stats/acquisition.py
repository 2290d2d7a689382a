"""Could it be the acquisition? Per monkey, how the scans were taken, and whether that goes with ICP.

A scan model that beats IOP may read anatomy, or the scanner: protocols go with monkeys, and within
a session the pressures were set in an order, so anything that drifts over a session (brightness,
focus, the operator's choice of protocol) drifts with ICP. This section, computed before any
verdict, shows per monkey the scans per protocol, eye and session, and per covariate (field of view,
eye, minutes since the session's first scan, each volume's global intensity statistics) its
within-monkey association with ICP and with IOP (docs/acquisition.md "The acquisition section").
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from icpcv.stats import agreement, bootstrap
from icpcv.stats.results import AcquisitionResult, Association, CovariateAssociation
from icpcv.util import fmt_num, natural_sorted

#: the covariates of the section, when the cohort has them: column -> label
COVARIATES = {
    "fov_mm": "field of view (mm, the larger side)",
    "eye_os": "eye (1 = OS, 0 = OD)",
    "session_minutes": "minutes since the session's first scan",
}
INTENSITY_LABELS = {"intensity_mean": "mean intensity", "intensity_sd": "intensity SD"}


def _cluster_sums(x, y, codes, G):
    """Per monkey the sums of the monkey-centred products: ``(Sxx_g, Syy_g, Sxy_g)``."""
    cnt = np.bincount(codes, minlength=G).astype(float)
    safe = np.where(cnt > 0, cnt, 1.0)
    xc = x - (np.bincount(codes, weights=x, minlength=G) / safe)[codes]
    yc = y - (np.bincount(codes, weights=y, minlength=G) / safe)[codes]
    return (np.bincount(codes, weights=xc * xc, minlength=G), np.bincount(codes, weights=yc * yc, minlength=G),
            np.bincount(codes, weights=xc * yc, minlength=G))


def within_monkey_association(x, y, subject, *, n_boot: int = 2000, seed=0, ci_level: float = 0.95) -> dict:
    """The repeated-measures correlation of ``x`` and ``y`` with a monkey-level interval.

    The repeated-measures correlation (Bakdash & Marusich 2017) is the Pearson correlation of the
    monkey-centred variables, :math:`\\tilde x_{gi} = x_{gi} - \\bar x_g`, :math:`\\tilde y_{gi} = y_{gi} - \\bar y_g`:

    .. math::

        r_{rm} = \\frac{\\sum_g S^{xy}_g}{\\sqrt{\\sum_g S^{xx}_g \\sum_g S^{yy}_g}},\\qquad
        S^{xy}_g = \\sum_i \\tilde x_{gi}\\tilde y_{gi},

    a common within-monkey slope that no difference between monkeys can produce. ``r``, ``dof``
    (N - G - 1), ``p`` and the Fisher-z interval ``ci`` are those of
    :func:`icpcv.stats.agreement.rmcorr` (the rmcorr package's, which treat the scans of a monkey
    as independent). ``ci_monkey`` is the percentile interval of :math:`r_{rm}` over ``n_boot``
    cluster-bootstrap resamples of whole monkeys (a monkey drawn twice adds its sums twice:
    the centring is within monkeys, so the sums are additive), the interval the section uses.
    Only monkeys in which both variables vary enter (``n_subjects``); rows with a missing value
    are left out.

    References
    ----------
    Bakdash JZ, Marusich LR (2017). Repeated measures correlation. Front Psychol 8:456.
    Bland JM, Altman DG (1995). Calculating correlation coefficients with repeated observations:
    Part 1 -- correlation within subjects. BMJ 310:446.
    Field CA, Welsh AH (2007). Bootstrapping clustered data. J R Stat Soc B 69:369-390.

    Examples
    --------
    Bland & Altman's (1995) pH and PaCO2 of 8 subjects (published in the rmcorr package:
    r = -0.5067697, df = 38, 95% CI -0.7067146 to -0.2318631):

    >>> import numpy as np
    >>> subject = np.repeat(np.arange(1, 9), [4, 4, 9, 5, 8, 6, 3, 8])
    >>> ph = [6.68, 6.53, 6.43, 6.33, 6.85, 7.06, 7.13, 7.17, 7.40, 7.42,
    ...       7.41, 7.37, 7.34, 7.35, 7.28, 7.30, 7.34, 7.36, 7.33, 7.29,
    ...       7.30, 7.35, 7.35, 7.30, 7.30, 7.37, 7.27, 7.28, 7.32, 7.32,
    ...       7.38, 7.30, 7.29, 7.33, 7.31, 7.33, 6.86, 6.94, 6.92, 7.19,
    ...       7.29, 7.21, 7.25, 7.20, 7.19, 6.77, 6.82]
    >>> paco2 = [3.97, 4.12, 4.09, 3.97, 5.27, 5.37, 5.41, 5.44, 5.67, 3.64,
    ...          4.32, 4.73, 4.96, 5.04, 5.22, 4.82, 5.07, 5.67, 5.10, 5.53,
    ...          4.75, 5.51, 4.28, 4.44, 4.32, 3.23, 4.46, 4.72, 4.75, 4.99,
    ...          4.78, 4.73, 5.12, 4.93, 5.03, 4.93, 6.85, 6.44, 6.52, 5.28,
    ...          4.56, 4.34, 4.32, 4.41, 3.69, 6.09, 5.58]
    >>> a = within_monkey_association(paco2, ph, subject, n_boot=2000)
    >>> print(f"r = {a['r']:.7f}, df = {a['dof']}, 95% CI {a['ci'][0]:.4f} to {a['ci'][1]:.4f}")
    r = -0.5067697, df = 38, 95% CI -0.7067 to -0.2319
    >>> a["ci_monkey"][0] < a["r"] < a["ci_monkey"][1], a["n_subjects"]
    (True, 8)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    subject = np.asarray(subject, dtype=object).astype(str)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, subject = x[ok], y[ok], subject[ok]
    # monkeys in which both vary (a constant monkey adds nothing to the sums, only to dof)
    names, code = np.unique(subject, return_inverse=True)
    lo_x, hi_x, lo_y, hi_y = (np.full(len(names), v) for v in (np.inf, -np.inf, np.inf, -np.inf))
    for extreme, values, ufunc in ((lo_x, x, np.minimum), (hi_x, x, np.maximum), (lo_y, y, np.minimum),
                                   (hi_y, y, np.maximum)):
        ufunc.at(extreme, code, values)
    keep = set(names[(hi_x > lo_x) & (hi_y > lo_y)].tolist())  # two or more values of each (finite: max > min)
    mask = np.isin(subject, list(keep))
    x, y, subject = x[mask], y[mask], subject[mask]
    out = agreement.rmcorr(x, y, subject, ci_level=ci_level)
    out["n_subjects"] = len(keep)
    out["ci_monkey"] = [np.nan, np.nan]
    if len(keep) < 2 or not np.isfinite(out["r"]):
        return out
    subjects = natural_sorted(keep)
    code_of = {s: i for i, s in enumerate(subjects)}
    codes = np.array([code_of[s] for s in subject], dtype=np.intp)
    G = len(subjects)
    sxx, syy, sxy = _cluster_sums(x, y, codes, G)
    rng = np.random.default_rng(seed)
    C = bootstrap.counts_from_indices(bootstrap.resample_indices(G, int(n_boot), rng), G)
    with np.errstate(invalid="ignore", divide="ignore"):
        rb = (C @ sxy) / np.sqrt((C @ sxx) * (C @ syy))
    rb = rb[np.isfinite(rb)]
    if rb.size:
        a = (1 - ci_level) / 2
        out["ci_monkey"] = [float(np.quantile(rb, a)), float(np.quantile(rb, 1 - a))]
    return out


def covariate_table(scans: pd.DataFrame) -> dict[str, tuple[str, np.ndarray]]:
    """The section's covariates present in a cohort's scan table: name -> (label, values per scan)."""
    out = {}
    if {"fov_x_mm", "fov_y_mm"} <= set(scans.columns):
        fov = np.fmax(pd.to_numeric(scans["fov_x_mm"], errors="coerce"), pd.to_numeric(scans["fov_y_mm"], errors="coerce"))
        if np.isfinite(fov).any():
            out["fov_mm"] = (COVARIATES["fov_mm"], np.asarray(fov, float))
    if "eye" in scans.columns:
        eye = scans["eye"].astype(str).str.strip().str.upper()
        vals = np.where(eye == "OS", 1.0, np.where(eye == "OD", 0.0, np.nan))
        if np.isfinite(vals).any():
            out["eye_os"] = (COVARIATES["eye_os"], vals)
    if "session_minutes" in scans.columns:
        vals = pd.to_numeric(scans["session_minutes"], errors="coerce").to_numpy(float)
        if np.isfinite(vals).any():
            out["session_minutes"] = (COVARIATES["session_minutes"], vals)
    for c in [c for c in scans.columns if str(c).startswith("intensity_")]:
        vals = pd.to_numeric(scans[c], errors="coerce").to_numpy(float)
        if np.isfinite(vals).any():
            q = c[len("intensity_p"):] if c.startswith("intensity_p") else ""
            out[c] = (INTENSITY_LABELS.get(c, f"intensity, {int(q)}th percentile" if q.isdigit() else c), vals)
    return out


def _counts(values) -> dict:
    s = pd.Series(values).astype(str).str.strip().replace({"": "(unknown)", "nan": "(unknown)", "None": "(unknown)"})
    return {k: int(v) for k, v in s.value_counts().sort_index().items()}


def acquisition_section(scans: pd.DataFrame, *, n_boot: int = 2000, seed=0, ci_level: float = 0.95,
                        source: str = "") -> AcquisitionResult:
    """The acquisition section of a cohort (``stats.json`` ``acquisition``).

    ``scans``: the cohort's scan table (``cohort/scans.csv``): ``subject, icp, iop`` and whichever
    acquisition columns it has (:data:`icpcv.cohort.geometry.ACQ_COLUMNS`, ``intensity_*``). Per
    monkey: scans, scans per protocol, per eye, and sessions. Per covariate
    (:func:`covariate_table`): its :func:`within_monkey_association` with ICP and with IOP, each
    over the monkeys in which both vary. ``statements`` names each covariate whose monkey-level
    interval with ICP excludes zero (a within-monkey association that a scan model could learn
    instead of anatomy), and the monkeys scanned with more than one protocol.

    >>> import pandas as pd
    >>> t = pd.DataFrame(dict(subject=["1"] * 4 + ["2"] * 4, icp=[2, 8, 15, 25] * 2, iop=[10, 20] * 4,
    ...                       session_minutes=[0, 20, 40, 60, 0, 25, 45, 70], protocol=["3x3"] * 6 + ["7x7"] * 2))
    >>> res = acquisition_section(t, n_boot=200)
    >>> res.per_monkey["2"]["protocols"], round(res.covariates["session_minutes"].icp.r, 3)
    ({'3x3': 2, '7x7': 2}, 0.99)
    """
    scans = scans.reset_index(drop=True)
    subj = scans["subject"].astype(str).to_numpy()
    per = {}
    for s in natural_sorted(set(subj)):
        g = scans[subj == s]
        per[s] = dict(n_scans=int(len(g)),
                      protocols=_counts(g["protocol"]) if "protocol" in g.columns else {},
                      eyes=_counts(g["eye"]) if "eye" in g.columns else {},
                      sessions=int(g["session"].astype(str).replace({"": np.nan, "nan": np.nan}).nunique())
                      if "session" in g.columns else 0)
    mixed = [s for s, d in per.items() if len([k for k in d["protocols"] if k != "(unknown)"]) > 1]
    icp = pd.to_numeric(scans["icp"], errors="coerce").to_numpy(float)
    iop = pd.to_numeric(scans["iop"], errors="coerce").to_numpy(float) if "iop" in scans.columns \
        else np.full(len(scans), np.nan)
    covs = {}
    for i, (name, (label, vals)) in enumerate(covariate_table(scans).items()):
        a_icp = within_monkey_association(vals, icp, subj, n_boot=n_boot, seed=[seed, i, 0], ci_level=ci_level)
        a_iop = within_monkey_association(vals, iop, subj, n_boot=n_boot, seed=[seed, i, 1], ci_level=ci_level)
        covs[name] = CovariateAssociation(label=label, n_scans=int(np.isfinite(vals).sum()),
                                          icp=Association.from_dict(a_icp), iop=Association.from_dict(a_iop))
    level = f"{round(ci_level * 100):g}%"
    statements = []
    if mixed:
        statements.append(f"{len(mixed)} of {len(per)} monkeys were scanned with more than one protocol "
                          f"({', '.join(mixed[:8])}{', ...' if len(mixed) > 8 else ''}): without --fov-mm their "
                          "volumes are resampled to one grid whatever their field of view.")
    hits = [c for c in covs.values() if c.icp.excludes_zero()]
    if hits:
        listed = "; ".join(f"{c.label} (r = {fmt_num(c.icp.r, 2)}, {fmt_num(c.icp.ci_monkey[0], 2)} to "
                           f"{fmt_num(c.icp.ci_monkey[1], 2)}, {c.icp.n_subjects} monkeys)" for c in hits)
        statements.append(f"Within monkeys, {'this goes' if len(hits) == 1 else 'these go'} with ICP "
                          f"(repeated-measures r, {level} monkey-level CI excluding zero): {listed}. A scan model "
                          f"can learn ICP from {'it' if len(hits) == 1 else 'them'} without reading anatomy.")
    if covs and not hits:
        statements.append(f"No acquisition covariate has a within-monkey association with ICP whose {level} "
                          "monkey-level interval excludes zero.")
    return AcquisitionResult(n_subjects=len(per), n_scans=int(len(scans)), ci_level=float(ci_level),
                             n_boot=int(n_boot), per_monkey=per, covariates=covs, mixed_protocols=mixed,
                             statements=statements, source=source)
