"""Agreement and within-subject association: Bland-Altman and rmcorr.

All functions take plain arrays and return plain dicts of floats (NaN where a
quantity is undefined); :mod:`icpcv.stats.analysis` turns NaN into ``None``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

#: Multiplier for 95% limits of agreement, as Bland & Altman write it (1.96,
#: not the 1.959964 normal quantile). Their 1986 Lancet example used 2.
LOA_MULTIPLIER = 1.96


def _codes(groups):
    """Integer codes 0..k-1 for group labels (sorted label order)."""
    _, first, codes = np.unique(np.asarray(groups, dtype=object).astype(str),
                                return_index=True, return_inverse=True)
    return codes.ravel(), len(first)


def bland_altman(method, reference, *, multiplier=LOA_MULTIPLIER, ci_level=0.95):
    """Classic Bland-Altman limits of agreement (one pair per unit).

    With differences :math:`d_i = \\text{method}_i - \\text{reference}_i`
    (for icpcv: ``y_pred - y_true``), :math:`i = 1..n`:

    .. math::

        \\bar d = \\frac1n\\sum d_i, \\qquad
        s = \\sqrt{\\frac{1}{n-1}\\sum (d_i-\\bar d)^2}\\ \\ (\\text{SD with } n-1),

        \\text{LoA} = \\bar d \\pm k\\, s \\quad (k = 1.96 \\text{ by default}).

    Confidence interval of each limit (Bland & Altman 1986, approximate
    standard error): :math:`SE = \\sqrt{3 s^2 / n}`, interval
    :math:`\\text{limit} \\pm t_{n-1,\\,1-\\alpha/2}\\, SE`.

    Proportional bias: ordinary least squares of :math:`d_i` on the mean of
    the two methods :math:`a_i = (\\text{method}_i + \\text{reference}_i)/2`
    (Bland & Altman 1999, section 3.2); slope with a :math:`t_{n-2}`
    confidence interval and two-sided p-value.

    Caution: this treats all n pairs as independent. With repeated scans of
    the same monkey the limits' CI and the slope's CI/p are too narrow; see
    :func:`bland_altman_repeated` and the cluster-bootstrap intervals.

    Parameters
    ----------
    method : array_like, shape (n,)
        The new method's measurements (for icpcv: ``y_pred``).
    reference : array_like, shape (n,)
        The reference method's measurements, paired with ``method``
        (for icpcv: ``y_true``).
    multiplier : float, default :data:`LOA_MULTIPLIER` (1.96)
        k in :math:`\\bar d \\pm k s`; the 1986 paper used 2.
    ci_level : float, default 0.95
        Level of the confidence intervals of the bias, the limits and the slope.

    Returns
    -------
    dict
        ``bias, sd, n, loa [lo, hi], loa_ci [[lo_lo, lo_hi], [hi_lo, hi_hi]],
        bias_ci, multiplier, proportional_bias {slope, intercept, ci, p, regressor}``.
        Entries that need more pairs than given (sd and CIs: n >= 2; slope:
        n >= 3 and a non-constant mean) are NaN.

    References
    ----------
    Bland JM, Altman DG (1986). Statistical methods for assessing agreement
    between two methods of clinical measurement. Lancet 1:307-310.
    Bland JM, Altman DG (1999). Measuring agreement in method comparison
    studies. Stat Methods Med Res 8:135-160.

    Examples
    --------
    Peak expiratory flow rate (l/min) of 17 subjects, first reading on the
    Wright and on the mini-Wright meter (Bland & Altman 1986).
    Published: mean difference -2.1, SD 38.8, limits (mean ± 2 SD) -79.7 to
    75.5 -- the paper formed the limits from the rounded mean and SD.

    >>> from icpcv.stats.agreement import bland_altman
    >>> wright = [494, 395, 516, 434, 476, 557, 413, 442, 650,
    ...           433, 417, 656, 267, 478, 178, 423, 427]
    >>> mini = [512, 430, 520, 428, 500, 600, 364, 380, 658,
    ...         445, 432, 626, 260, 477, 259, 350, 451]
    >>> res = bland_altman(wright, mini, multiplier=2)
    >>> print(f"bias {res['bias']:.1f}, SD {res['sd']:.1f}, "
    ...       f"limits {res['loa'][0]:.1f} to {res['loa'][1]:.1f}")
    bias -2.1, SD 38.8, limits -79.6 to 75.4
    >>> (lo_lo, lo_hi), (hi_lo, hi_hi) = res["loa_ci"]  # limit ± t(16) sqrt(3 s²/17)
    >>> print(f"{lo_lo:.1f} to {lo_hi:.1f}; {hi_lo:.1f} to {hi_hi:.1f}")
    -114.2 to -45.1; 40.9 to 109.9
    >>> pb = res["proportional_bias"]
    >>> print(f"slope {pb['slope']:.3f}, p = {pb['p']:.2f}")
    slope 0.029, p = 0.75
    """
    x = np.asarray(method, dtype=float)
    r = np.asarray(reference, dtype=float)
    d = x - r
    n = d.size
    nan2 = [np.nan, np.nan]
    out = {"n": int(n), "multiplier": float(multiplier)}
    if n == 0:
        out.update(bias=np.nan, sd=np.nan, loa=nan2, loa_ci=[nan2, nan2], bias_ci=nan2,
                   proportional_bias={"slope": np.nan, "intercept": np.nan, "ci": nan2,
                                      "p": np.nan, "regressor": "mean of the two methods"})
        return out
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else np.nan
    lo, hi = bias - multiplier * sd, bias + multiplier * sd
    alpha = 1.0 - ci_level
    if n > 1:
        t = sps.t.ppf(1 - alpha / 2, n - 1)
        se_lim = np.sqrt(3.0 * sd**2 / n)
        se_bias = sd / np.sqrt(n)
        loa_ci = [[lo - t * se_lim, lo + t * se_lim], [hi - t * se_lim, hi + t * se_lim]]
        bias_ci = [bias - t * se_bias, bias + t * se_bias]
    else:
        loa_ci, bias_ci = [nan2, nan2], nan2
    out.update(bias=bias, sd=sd, loa=[lo, hi], loa_ci=loa_ci, bias_ci=bias_ci)

    a = (x + r) / 2.0
    pb = {"slope": np.nan, "intercept": np.nan, "ci": nan2, "p": np.nan,
          "regressor": "mean of the two methods"}
    sxx = float(((a - a.mean()) ** 2).sum())
    if n > 2 and sxx > 0:
        slope = float(((a - a.mean()) * (d - bias)).sum() / sxx)
        intercept = bias - slope * float(a.mean())
        resid = d - intercept - slope * a
        s2 = float((resid**2).sum()) / (n - 2)
        se = np.sqrt(s2 / sxx)
        t2 = sps.t.ppf(1 - alpha / 2, n - 2)
        if se > 0:
            p = float(2 * sps.t.sf(abs(slope / se), n - 2))
        else:
            p = 0.0 if slope != 0 else 1.0
        pb.update(slope=slope, intercept=intercept, ci=[slope - t2 * se, slope + t2 * se], p=p)
    out["proportional_bias"] = pb
    return out


def bland_altman_repeated(method, reference, subject, *, multiplier=LOA_MULTIPLIER):
    """Limits of agreement with repeated pairs per subject, true value varying.

    Bland & Altman (2007, section 3; 1999, section 5.3 corrected) for
    :math:`k` subjects with :math:`m_i` pairs each, :math:`n = \\sum m_i`,
    differences :math:`d_{ij} = \\text{method}_{ij} - \\text{reference}_{ij}`.
    One-way ANOVA of the differences by subject:

    .. math::

        MS_w = \\frac{\\sum_i\\sum_j (d_{ij}-\\bar d_i)^2}{n-k},\\qquad
        MS_b = \\frac{\\sum_i m_i(\\bar d_i-\\bar d)^2}{k-1},

        \\sigma^2_b = \\frac{MS_b - MS_w}{(n^2-\\sum m_i^2)/((k-1)n)}
        \\ \\ (\\text{set to 0 if negative}),\\qquad
        \\sigma^2_d = \\sigma^2_b + MS_w,

        \\text{bias} = \\bar d = \\frac1n \\sum_{ij} d_{ij},\\qquad
        \\text{LoA} = \\bar d \\pm 1.96\\,\\sigma_d .

    The bias is the mean of all n differences (as in the 2007 paper), not
    the mean of subject means. ``sd`` is :math:`\\sigma_d`, the SD of a
    single difference between methods on a random subject.

    Parameters
    ----------
    method, reference : array_like, shape (n,)
        Paired measurements (for icpcv: ``y_pred`` and ``y_true``).
    subject : array_like, shape (n,)
        Subject label of each pair (compared as strings).
    multiplier : float, default :data:`LOA_MULTIPLIER` (1.96)
        k in :math:`\\bar d \\pm k\\,\\sigma_d`.

    Returns
    -------
    dict
        ``bias, sd, loa [lo, hi], sd_within, sd_between, n, n_subjects, multiplier``.
        ``sd_within`` is :math:`\\sqrt{MS_w}`, ``sd_between`` is :math:`\\sigma_b`.
        With fewer than 2 subjects, or no subject with 2 pairs, everything
        but the bias is NaN.

    References
    ----------
    Bland JM, Altman DG (2007). Agreement between methods of measurement with
    multiple observations per individual. J Biopharm Stat 17:571-582.
    Bland JM, Altman DG (1999). Measuring agreement in method comparison
    studies. Stat Methods Med Res 8:135-160.

    Examples
    --------
    Cardiac output (l/min) of 12 subjects by radionuclide ventriculography
    (RV) and impedance cardiography (IC), 3 to 6 pairs each (Bland & Altman
    1999; 2007, section 3). Published, RV - IC: mean difference
    0.6021667, SD 0.99062408, limits -1.3394565 to 2.5437899.

    >>> import numpy as np
    >>> from icpcv.stats.agreement import bland_altman_repeated
    >>> subject = np.repeat(np.arange(1, 13), [5, 4, 6, 5, 6, 4, 4, 6, 3, 5, 6, 6])
    >>> rv = [7.83, 7.42, 7.89, 7.12, 7.88, 6.16, 7.26, 6.71, 6.54, 4.75,
    ...       5.24, 4.86, 4.78, 6.05, 5.42, 4.21, 3.61, 3.72, 3.87, 3.92,
    ...       3.13, 2.98, 2.85, 3.17, 3.09, 3.12, 5.92, 6.42, 5.92, 6.27,
    ...       7.13, 6.62, 6.58, 6.93, 4.54, 4.81, 5.11, 5.29, 5.39, 5.57,
    ...       4.48, 4.92, 3.97, 4.22, 4.65, 4.74, 4.44, 4.50, 6.78, 6.07,
    ...       6.52, 6.42, 6.41, 5.76, 5.06, 4.72, 4.90, 4.80, 4.90, 5.10]
    >>> ic = [6.57, 5.62, 6.90, 6.57, 6.35, 4.06, 4.29, 4.26, 4.09, 4.71, 5.50, 5.08,
    ...       5.02, 6.01, 5.67, 4.14, 4.20, 4.61, 4.68, 5.04, 3.03, 2.86, 2.77, 2.46,
    ...       2.32, 2.43, 5.90, 5.81, 5.70, 5.76, 5.09, 4.63, 4.61, 5.09, 4.72, 4.61,
    ...       4.36, 4.20, 4.36, 4.20, 3.17, 3.12, 2.96, 4.35, 4.62, 3.16, 3.53, 3.53,
    ...       7.20, 6.09, 7.00, 7.10, 7.40, 6.80, 4.50, 4.20, 3.80, 3.80, 4.20, 4.50]
    >>> res = bland_altman_repeated(rv, ic, subject)
    >>> print(f"bias {res['bias']:.6f}, SD {res['sd']:.6f}, "
    ...       f"limits {res['loa'][0]:.6f} to {res['loa'][1]:.6f}")
    bias 0.602167, SD 0.990624, limits -1.339457 to 2.543790
    >>> print(f"within-subject SD {res['sd_within']:.4f}, between {res['sd_between']:.4f}")
    within-subject SD 0.4132, between 0.9003
    """
    x = np.asarray(method, dtype=float)
    r = np.asarray(reference, dtype=float)
    d = x - r
    codes, k = _codes(subject)
    n = d.size
    out = {"n": int(n), "n_subjects": int(k), "multiplier": float(multiplier)}
    if n == 0 or k < 2 or n <= k:
        bias = float(d.mean()) if n else np.nan
        out.update(bias=bias, sd=np.nan, loa=[np.nan, np.nan], sd_within=np.nan,
                   sd_between=np.nan)
        return out
    m = np.bincount(codes, minlength=k).astype(float)
    sums = np.bincount(codes, weights=d, minlength=k)
    means = sums / m
    bias = float(d.mean())
    ss_w = float(((d - means[codes]) ** 2).sum())
    ss_b = float((m * (means - bias) ** 2).sum())
    ms_w = ss_w / (n - k)
    ms_b = ss_b / (k - 1)
    divisor = (n**2 - float((m**2).sum())) / ((k - 1) * n)
    var_b = max((ms_b - ms_w) / divisor, 0.0)
    sd = float(np.sqrt(var_b + ms_w))
    out.update(bias=bias, sd=sd, loa=[bias - multiplier * sd, bias + multiplier * sd],
               sd_within=float(np.sqrt(ms_w)), sd_between=float(np.sqrt(var_b)))
    return out


def rmcorr(x, y, subject, *, ci_level=0.95):
    """Repeated-measures correlation (Bakdash & Marusich 2017).

    ANCOVA with a common slope and one intercept per subject. Equivalently,
    the Pearson correlation of the subject-centred variables
    :math:`\\tilde x_{ij} = x_{ij} - \\bar x_i`, :math:`\\tilde y_{ij} = y_{ij} - \\bar y_i`:

    .. math::

        r_{rm} = \\frac{\\sum \\tilde x\\tilde y}{\\sqrt{\\sum\\tilde x^2\\sum\\tilde y^2}}
        = \\operatorname{sign}(\\beta)
          \\sqrt{\\frac{SS_{x}}{SS_{x} + SS_{res}}},\\qquad
        \\text{dof} = N - k - 1,

        t = r\\sqrt{\\text{dof}/(1-r^2)}\\ \\ (\\text{two-sided}, t_{\\text{dof}}),\\qquad
        CI = \\tanh\\!\\left(\\operatorname{atanh} r \\pm
              z_{1-\\alpha/2}/\\sqrt{\\text{dof}-1}\\right).

    The CI uses Fisher's z with standard error :math:`1/\\sqrt{\\text{dof}-1}`
    as in the ``rmcorr`` R package (N = dof + 2 in the usual
    :math:`1/\\sqrt{N-3}`); on the Bland & Altman (1995) pH/PaCO2 data this
    reproduces the published r = -0.5067697, dof = 38, p = 0.0008471,
    95% CI -0.7067 to -0.2319.

    Parameters
    ----------
    x, y : array_like, shape (N,)
        Paired repeated measurements (symmetric: swapping them gives the same r).
    subject : array_like, shape (N,)
        Subject label of each pair (compared as strings).
    ci_level : float, default 0.95
        Level of the Fisher-z confidence interval.

    Returns
    -------
    dict
        ``r, dof, p, ci [lo, hi], n, n_subjects``. r, p and ci are NaN when
        dof < 1 or a variable does not vary within subjects.

    References
    ----------
    Bakdash JZ, Marusich LR (2017). Repeated measures correlation.
    Front Psychol 8:456.
    Bland JM, Altman DG (1995). Calculating correlation coefficients with
    repeated observations: Part 1 -- correlation within subjects. BMJ 310:446.

    Examples
    --------
    Intramural pH and PaCO2 of 8 subjects, 3 to 9 observations each
    (Bland & Altman 1995). Published (rmcorr R package, Bakdash & Marusich
    2017): r = -0.5067697, df = 38, p = 0.0008471, 95% CI -0.7067146 to
    -0.2318631.

    >>> import numpy as np
    >>> from icpcv.stats.agreement import rmcorr
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
    >>> res = rmcorr(paco2, ph, subject)
    >>> print(f"r = {res['r']:.7f}, df = {res['dof']}, p = {res['p']:.7f}")
    r = -0.5067697, df = 38, p = 0.0008471
    >>> print(f"95% CI {res['ci'][0]:.7f} to {res['ci'][1]:.7f}")
    95% CI -0.7067146 to -0.2318631
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    codes, k = _codes(subject)
    n = x.size
    dof = n - k - 1
    out = {"r": np.nan, "dof": int(dof), "p": np.nan, "ci": [np.nan, np.nan],
           "n": int(n), "n_subjects": int(k)}
    if n == 0 or dof < 1:
        return out
    cnt = np.bincount(codes, minlength=k)
    xc = x - (np.bincount(codes, weights=x, minlength=k) / cnt)[codes]
    yc = y - (np.bincount(codes, weights=y, minlength=k) / cnt)[codes]
    sxx, syy, sxy = float(xc @ xc), float(yc @ yc), float(xc @ yc)
    if sxx <= 0 or syy <= 0:
        return out
    r = float(np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0))
    if abs(r) < 1:
        t = r * np.sqrt(dof / (1 - r**2))
        p = float(2 * sps.t.sf(abs(t), dof))
    else:
        p = 0.0
    out.update(r=r, p=p)
    if dof > 1 and abs(r) < 1:
        z = np.arctanh(r)
        half = sps.norm.ppf(1 - (1 - ci_level) / 2) / np.sqrt(dof - 1)
        out["ci"] = [float(np.tanh(z - half)), float(np.tanh(z + half))]
    return out
