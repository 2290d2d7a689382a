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
import sklearn
import statsmodels.formula.api as smf
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from icpcv.cohort import ScanSet
from icpcv.cohort.volumes import resample
from icpcv.models.base import Model


def sklearn_version() -> str:
    return sklearn.__version__


def state_value(v):
    """An array as ``{"dtype", "data"}`` (float32 stays float32: each value is exact in JSON), a numpy scalar as a number."""
    if isinstance(v, np.ndarray):
        return {"dtype": v.dtype.str, "data": v.tolist()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def from_state_value(v):
    """The inverse of :func:`state_value` (kept models' JSON state back to arrays)."""
    if isinstance(v, dict) and set(v) == {"dtype", "data"}:
        return np.asarray(v["data"], dtype=np.dtype(v["dtype"]))
    return v


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

    # ---- kept as JSON (issue 20): a baseline lists its fitted attributes; numbers stay numbers, arrays become
    # {"dtype", "data"} (every float64 and float32 value round-trips exactly through JSON's shortest repr)
    #: fitted attributes kept (numbers, or numpy arrays)
    STATE: tuple[str, ...] = ()
    #: settings given to ``__init__`` that the state records (a new model is built with them)
    SETTINGS: tuple[str, ...] = ()

    def to_state(self) -> dict:
        if not self.STATE:  # a baseline that has not listed its fitted attributes cannot be kept (nor wrongly reloaded)
            raise NotImplementedError(f"{type(self).__name__} lists no fitted attributes in STATE")
        fitted = {name: state_value(getattr(self, name)) for name in self.STATE}
        return dict(name=self.name, kind="baseline", settings={k: _plain(getattr(self, k)) for k in self.SETTINGS},
                    fitted=fitted)

    def load_state(self, state: dict) -> "Baseline":
        fitted = state["fitted"]
        missing = [k for k in self.STATE if k not in fitted]
        if missing:
            raise ValueError(f"{self.name}: the kept state lacks {', '.join(missing)}")
        mine = {k: _plain(getattr(self, k)) for k in self.SETTINGS}
        if mine != dict(state.get("settings") or {}):
            raise ValueError(f"{self.name}: the kept state was fitted with settings {state.get('settings')}, this model "
                             f"has {mine}; build it with from_state")
        for name in self.STATE:
            setattr(self, name, from_state_value(fitted[name]))
        return self

    @classmethod
    def from_state(cls, state: dict) -> "Baseline":
        """A fitted baseline from :meth:`to_state`: ``cls(**settings)`` with its fitted attributes set."""
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in (state.get("settings") or {}).items()}
        return cls(**settings).load_state(state)


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


class MeanBaseline(Baseline):
    """Predict the training scans' mean ICP for everyone."""

    name = "mean"
    needs_iop = False
    STATE = ("mean_",)

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
    STATE = ("coef_",)
    SETTINGS = ("degree",)

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
    STATE = ("fe_", "group_var_", "scale_", "converged_")

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
    SETTINGS = ("grid", "n_components")
    STATE = ("iop_mu_", "iop_sd_")
    #: the fitted attributes of the scikit-learn parts that their ``transform``/``predict`` read
    SKLEARN_STATE = {"scaler_": ("mean_", "scale_", "var_", "n_features_in_", "n_samples_seen_"),
                     "pca_": ("components_", "mean_", "n_components_", "explained_variance_",
                              "explained_variance_ratio_", "singular_values_", "noise_variance_",
                              "n_features_in_", "n_samples_"),
                     "ridge_": ("coef_", "intercept_", "alpha_", "n_features_in_")}

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

    def _parts(self, k: int | None = None) -> dict:
        return {"scaler_": StandardScaler(), "pca_": PCA(n_components=k, random_state=0),
                "ridge_": RidgeCV(alphas=np.logspace(-3, 4, 30))}

    def to_state(self) -> dict:
        state = super().to_state()
        for part, attrs in self.SKLEARN_STATE.items():
            obj = getattr(self, part)
            state["fitted"][part] = {a: state_value(getattr(obj, a)) for a in attrs}
        state["sklearn"] = sklearn_version()
        return state

    def load_state(self, state: dict) -> "RidgeScan":
        super().load_state(state)
        fitted = state["fitted"]
        parts = self._parts(int(fitted["pca_"]["n_components_"]))
        for part, attrs in self.SKLEARN_STATE.items():
            obj = parts[part]
            for a in attrs:  # the same scikit-learn code then predicts from the same numbers
                setattr(obj, a, from_state_value(fitted[part][a]))
            setattr(self, part, obj)
        return self

    def describe(self):
        return {"name": self.name, "n_components": int(self.pca_.n_components_), "alpha": float(self.ridge_.alpha_),
                "explained_variance": float(self.pca_.explained_variance_ratio_.sum())}
