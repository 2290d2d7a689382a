"""Baselines with a scikit-learn face, fitted inside each fold.

Each fits the scans of the fold's training side (training and inner-validation monkeys: a
baseline has nothing to early-stop) from their ``iop`` (mmHg), ``icp`` (mmHg, the target) and
``subject``, and, for ``ridge_scan``, their volumes. ``__init__`` stores settings only; learning
happens in ``fit``. They answer two questions: does the scan add anything beyond IOP, and does a
CNN add anything beyond a linear read of the scan?
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from icpcv.cohort import ScanSet
from icpcv.cohort.volumes import resample
from icpcv.models.base import Model


class Baseline(Model):
    """A deterministic model fitted on every scan of the fold's training side (``train`` + ``val``)."""

    name = "baseline"

    def fit(self, train: ScanSet, val: ScanSet | None = None):
        scans = train if val is None else train + val
        return self.fit_scans(scans.frame, scans.volumes() if self.needs_volumes else None)

    def predict(self, scans: ScanSet) -> np.ndarray:
        return self.predict_scans(scans.frame, scans.volumes() if self.needs_volumes else None)

    def fit_scans(self, frame: pd.DataFrame, volumes: np.ndarray | None = None):
        raise NotImplementedError

    def predict_scans(self, frame: pd.DataFrame, volumes: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


class MeanBaseline(Baseline):
    """Predict the training scans' mean ICP for everyone."""

    name = "mean"
    needs_iop = False

    def fit_scans(self, frame, volumes=None):
        self.mean_ = float(frame["icp"].mean())
        return self

    def predict_scans(self, frame, volumes=None):
        return np.full(len(frame), self.mean_)

    def describe(self):
        return {"name": self.name, "mean_icp": self.mean_}


class OLSIOP(Baseline):
    """ICP = b0 + b1 IOP (+ b2 IOP^2 with ``degree=2``), ordinary least squares."""

    name = "ols_iop"

    def __init__(self, degree: int = 1):
        self.degree = degree
        if degree == 2:
            self.name = "ols_iop2"

    def _design(self, frame):
        iop = frame["iop"].to_numpy(float)
        return np.column_stack([iop**d for d in range(self.degree + 1)])

    def fit_scans(self, frame, volumes=None):
        X = self._design(frame)
        self.coef_, *_ = np.linalg.lstsq(X, frame["icp"].to_numpy(float), rcond=None)
        return self

    def predict_scans(self, frame, volumes=None):
        return self._design(frame) @ self.coef_

    def describe(self):
        return {"name": self.name, "coef": self.coef_.tolist()}


class MixedLMIOP(Baseline):
    """ICP = b0 + b1 IOP + u_subject + e, u ~ N(0, s_u^2), fitted by REML (statsmodels MixedLM).

    The held-out subject's random intercept is unknown, so it is predicted from the fixed
    effects alone (u = 0): the population-average prediction.
    """

    name = "mixedlm_iop"

    def fit_scans(self, frame, volumes=None):
        data = pd.DataFrame({"icp": frame["icp"].to_numpy(float), "iop": frame["iop"].to_numpy(float),
                             "subject": frame["subject"].astype(str).to_numpy()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the fit is checked below
            result = smf.mixedlm("icp ~ iop", data, groups=data["subject"]).fit(reml=True)
        self.fe_ = result.fe_params.to_numpy()
        self.group_var_ = float(result.cov_re.iloc[0, 0])
        self.scale_ = float(result.scale)
        self.converged_ = bool(result.converged)
        return self

    def predict_scans(self, frame, volumes=None):
        return self.fe_[0] + self.fe_[1] * frame["iop"].to_numpy(float)

    def describe(self):
        return {"name": self.name, "fixed_effects": self.fe_.tolist(), "subject_var": self.group_var_,
                "residual_var": self.scale_, "converged": self.converged_}


class RidgeScan(Baseline):
    """PCA of downsampled volumes plus IOP, then ridge regression; the whole pipeline in the fold.

    Volumes are area-averaged to ``grid``, standardised voxel-wise and reduced to at most
    ``n_components`` principal components; IOP is standardised and appended; the ridge
    penalty is chosen by generalised cross-validation on the training scans, or fixed at
    ``alpha`` (a ``run --tune`` candidate, issue 21).
    """

    name = "ridge_scan"
    needs_volumes = True

    def __init__(self, grid=(8, 8, 16), n_components: int = 20, alpha: float | None = None):
        self.grid = tuple(grid)
        self.n_components = n_components
        self.alpha = alpha

    def _features(self, volumes):
        return np.stack([resample(v, self.grid).ravel() for v in volumes])

    def fit_scans(self, frame, volumes=None):
        feats = self._features(volumes)
        self.scaler_ = StandardScaler().fit(feats)
        k = int(min(self.n_components, len(feats) - 1, feats.shape[1]))
        self.pca_ = PCA(n_components=k, random_state=0).fit(self.scaler_.transform(feats))
        iop = frame["iop"].to_numpy(float)
        self.iop_mu_, self.iop_sd_ = float(iop.mean()), float(iop.std() or 1.0)
        X = self._design(feats, iop)
        alphas = np.logspace(-3, 4, 30) if self.alpha is None else [float(self.alpha)]
        self.ridge_ = RidgeCV(alphas=alphas).fit(X, frame["icp"].to_numpy(float))
        return self

    def _design(self, feats, iop):
        pcs = self.pca_.transform(self.scaler_.transform(feats))
        return np.column_stack([pcs, (iop - self.iop_mu_) / self.iop_sd_])

    def predict_scans(self, frame, volumes=None):
        return self.ridge_.predict(self._design(self._features(volumes), frame["iop"].to_numpy(float)))

    def describe(self):
        return {"name": self.name, "n_components": int(self.pca_.n_components_), "alpha": float(self.ridge_.alpha_),
                "explained_variance": float(self.pca_.explained_variance_ratio_.sum())}
