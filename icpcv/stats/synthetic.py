"""Synthetic predictions tables (for tests, the benchmark and examples).

Not used on real data. Errors have a per-subject offset (clustered errors)
so that subject-level and scan-level resampling differ, as in real cohorts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_predictions(n_subjects=14, scans=(19, 250), models=None, seed=0,
                          offset_sd=2.0, noise_sd=3.0):
    """Long predictions frame ``fold, subject, scan_id, model, y_true, y_pred, iop``.

    ``scans`` is either a (low, high) range for the number of scans per
    subject (drawn uniformly) or a sequence of per-subject counts.
    ``models`` maps model name -> (bias, error scale); default five models
    including the reference ``ols_iop``.

    Generating model, for subject g, scan i and model m with (bias_m, scale_m)::

        y_true_gi = round(max(N(15, 5²)_g + N(0, 6²)_gi, 1), 1)
        e_mgi     = bias_m + scale_m (s_g + u_mg + eps_mgi)
        y_pred    = y_true + e,   iop_gi = round(clip(N(20, 8²), 5, 50))

    with s_g ~ N(0, offset_sd²) shared by all models, u_mg ~ N(0, (offset_sd/2)²)
    and eps ~ N(0, noise_sd²). Subject g is held out in fold g - 1 (leave one
    subject out).

    Parameters
    ----------
    n_subjects : int, default 14
        Subjects, labelled 1..n_subjects.
    scans : (int, int) or sequence of int, default (19, 250)
        Inclusive range of scans per subject, or one count per subject. A
        pair is read as a range unless ``n_subjects`` is 2, when it is two counts.
    models : dict or None
        ``{name: (bias, scale)}``; None for the five defaults.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.
    offset_sd, noise_sd : float, default 2.0 and 3.0
        SD of the per-subject offset and of the per-scan noise.

    Returns
    -------
    pandas.DataFrame
        One row per (model, scan), models in the order of ``models``.

    Examples
    --------
    >>> from icpcv.stats.synthetic import synthetic_predictions
    >>> df = synthetic_predictions(n_subjects=3, scans=(2, 3, 4), seed=0)
    >>> df.shape
    (45, 7)
    >>> list(df.columns)
    ['fold', 'subject', 'scan_id', 'model', 'y_true', 'y_pred', 'iop']
    >>> list(df["model"].unique())
    ['ols_iop', 'cnn', 'cnn_iop', 'ridge_oct', 'mean']
    >>> df[df["model"] == "cnn"].groupby("subject").size().tolist()
    [2, 3, 4]
    """
    rng = np.random.default_rng(seed)
    if models is None:
        models = {"ols_iop": (0.5, 1.0), "cnn": (0.0, 0.8), "cnn_iop": (0.2, 0.75),
                  "ridge_oct": (0.3, 0.95), "mean": (0.0, 1.3)}
    if len(scans) == 2 and n_subjects != 2:
        sizes = rng.integers(scans[0], scans[1] + 1, size=n_subjects)
    else:
        sizes = np.asarray(scans, dtype=int)
    subj = np.repeat(np.arange(1, n_subjects + 1), sizes)
    n = subj.size
    y = rng.normal(15, 5, n_subjects)[subj - 1] + rng.normal(0, 6, n)
    y = np.round(np.clip(y, 1, None), 1)
    iop = np.round(rng.normal(20, 8, n).clip(5, 50), 0)
    scan_id = np.array([f"s{i:05d}" for i in range(n)])
    shared = rng.normal(0, offset_sd, n_subjects)[subj - 1]
    frames = []
    for name, (bias, scale) in models.items():
        e = bias + scale * (shared + rng.normal(0, offset_sd / 2, n_subjects)[subj - 1]
                            + rng.normal(0, noise_sd, n))
        frames.append(pd.DataFrame({
            "fold": subj - 1, "subject": subj, "scan_id": scan_id, "model": name,
            "y_true": y, "y_pred": y + e, "iop": iop}))
    return pd.concat(frames, ignore_index=True)
