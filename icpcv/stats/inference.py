"""Paired tests over subjects: sign-flip permutation test and Holm adjustment."""

from __future__ import annotations

import numpy as np

#: Enumerate all 2^G sign patterns up to this many subjects (2^20 ≈ 1e6 sums).
MAX_EXACT = 20


def _all_sign_sums(d):
    """Σ_g s_g d_g for all 2^G sign vectors s ∈ {-1, +1}^G (length 2^G array).

    Built by doubling: start from [0] and, for each d_g, append both
    (partial + d_g) and (partial - d_g). O(2^G) time and memory.
    """
    sums = np.zeros(1)
    for v in d:
        sums = np.concatenate((sums + v, sums - v))
    return sums


def signflip_test(diffs, *, n_perm=100_000, seed=0, max_exact=MAX_EXACT):
    """Two-sided sign-flip (paired permutation) test over subjects.

    Under H0 each subject's loss difference D_g (model minus reference:
    per-subject MAE difference, or per-subject MSE difference) is symmetric
    about 0, so its sign is exchangeable. Statistic :math:`T = \\frac1G\\sum_g D_g`.

    * G ≤ ``max_exact``: exact, enumerating all :math:`2^G` sign patterns,
      :math:`p = \\#\\{s: |T(s)| \\ge |T_{obs}|\\} / 2^G` (the observed pattern
      is one of them, so p ≥ 2/2^G whenever T_obs ≠ 0).
    * G > ``max_exact``: Monte Carlo with ``n_perm`` random sign patterns
      from ``numpy.random.default_rng(seed)``,
      :math:`p = (1 + \\#\\{|T(s)| \\ge |T_{obs}|\\}) / (1 + n_{perm})`
      (Phipson & Smyth 2010, never 0).

    Ties are judged with a relative tolerance of 1e-9 of Σ|D_g| (floating
    sums of the same numbers in another order differ in the last bits).
    Subjects with non-finite D_g are dropped; G = 0 gives p = NaN.

    Parameters
    ----------
    diffs : array_like, shape (G,)
        One paired difference D_g per subject (model minus reference).
    n_perm : int, default 100000
        Random sign patterns for the Monte Carlo branch (G > ``max_exact``).
    seed : int, default 0
        Seed of the Monte Carlo branch; the exact branch uses no randomness.
    max_exact : int, default :data:`MAX_EXACT` (20)
        Largest G that is enumerated exactly.

    Returns
    -------
    dict ``{"p", "statistic", "n_subjects", "method": "exact" | "monte_carlo", "n_perm"}``
        ``statistic`` is the mean difference :math:`T_{obs}`; ``n_perm`` is
        :math:`2^G` for the exact test.

    References
    ----------
    Fisher RA (1935). The Design of Experiments, section 21. Oliver & Boyd.
    Good PI (2005). Permutation, Parametric and Bootstrap Tests of Hypotheses, 3rd ed.
    Phipson B, Smyth GK (2010). Permutation p-values should never be zero.
    Stat Appl Genet Mol Biol 9:39.

    Examples
    --------
    Fisher's (1935) test of Darwin's 15 pairs of Zea mays, cross- minus
    self-fertilised height in eighths of an inch. Published: 1,726 of the
    32,768 sign patterns give a sum at least as large in absolute value,
    p = 0.0527.

    >>> from icpcv.stats.inference import signflip_test
    >>> darwin = [49, -67, 8, 16, 6, 23, 28, 41, 14, 29, 56, 24, 75, 60, -48]
    >>> res = signflip_test(darwin)
    >>> res["method"], res["n_perm"], round(res["p"] * res["n_perm"])
    ('exact', 32768, 1726)
    >>> print(f"p = {res['p']:.4f}, mean difference {res['statistic']:.2f}")
    p = 0.0527, mean difference 20.93

    Four subjects that all favour the model: only the observed pattern and
    its mirror image are as extreme, p = 2/16.

    >>> signflip_test([0.5, 1.0, 2.0, 3.5])["p"]
    0.125
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    G = d.size
    if G == 0:
        return {"p": float("nan"), "statistic": float("nan"), "n_subjects": 0,
                "method": "exact", "n_perm": 0}
    t_obs = abs(d.sum())
    tol = 1e-9 * float(np.abs(d).sum())
    if G <= max_exact:
        sums = _all_sign_sums(d)
        p = float(np.count_nonzero(np.abs(sums) >= t_obs - tol)) / sums.size
        method, n_used = "exact", int(sums.size)
    else:
        rng = np.random.default_rng(seed)
        hits = 0
        done = 0
        chunk = max(1, min(int(n_perm), 1_000_000 // G))
        while done < n_perm:
            m = min(chunk, n_perm - done)
            signs = rng.integers(0, 2, size=(m, G), dtype=np.int8) * 2 - 1
            hits += int(np.count_nonzero(np.abs(signs @ d) >= t_obs - tol))
            done += m
        p = (1 + hits) / (1 + n_perm)
        method, n_used = "monte_carlo", int(n_perm)
    return {"p": float(min(p, 1.0)), "statistic": float(d.mean()), "n_subjects": int(G),
            "method": method, "n_perm": n_used}


def holm(pvalues):
    """Holm (1979) step-down adjusted p-values.

    Sort the m finite p-values ascending, :math:`p_{(1)}\\le\\dots\\le p_{(m)}`;
    :math:`\\tilde p_{(i)} = \\min\\{1, \\max_{j\\le i} (m-j+1)\\,p_{(j)}\\}`.
    NaN / None stay NaN and do not count in m. Same as
    ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``.

    Parameters
    ----------
    pvalues : sequence of float or None
        Unadjusted p-values, in any order.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values (float), in the input order.

    References
    ----------
    Holm S (1979). A simple sequentially rejective multiple test procedure.
    Scand J Statist 6:65-70.

    Examples
    --------
    Sorted, the three finite p-values are scaled by 3, 2 and 1
    (0.03, 0.06, 0.04) and then made non-decreasing:

    >>> import numpy as np
    >>> from icpcv.stats.inference import holm
    >>> adjusted = holm([0.01, 0.04, 0.03, None])
    >>> np.round(adjusted, 4).tolist()
    [0.03, 0.06, 0.06, nan]
    >>> from statsmodels.stats.multitest import multipletests
    >>> bool(np.allclose(adjusted[:3], multipletests([0.01, 0.04, 0.03], method="holm")[1]))
    True
    """
    p = np.array([np.nan if v is None else v for v in pvalues], dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out
