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

    Returns
    -------
    dict
        ``bias, sd, n, loa [lo, hi], loa_ci [[lo_lo, lo_hi], [hi_lo, hi_hi]],
        bias_ci, multiplier, proportional_bias {slope, intercept, ci, p, regressor}``.

    References
    ----------
    Bland JM, Altman DG (1986). Statistical methods for assessing agreement
    between two methods of clinical measurement. Lancet 1:307-310.
    Bland JM, Altman DG (1999). Measuring agreement in method comparison
    studies. Stat Methods Med Res 8:135-160.
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

    Returns
    -------
    dict
        ``bias, sd, loa [lo, hi], sd_within, sd_between, n, n_subjects, multiplier``.

    References
    ----------
    Bland JM, Altman DG (2007). Agreement between methods of measurement with
    multiple observations per individual. J Biopharm Stat 17:571-582.
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

    Returns
    -------
    dict
        ``r, dof, p, ci [lo, hi], n, n_subjects``.

    References
    ----------
    Bakdash JZ, Marusich LR (2017). Repeated measures correlation.
    Front Psychol 8:456.
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
