"""Nuisance baselines: models that cannot see anatomy (issue 19; docs/acquisition.md "Nuisance baselines").

* ``acq``: ICP ~ IOP + acquisition covariates: protocol and eye one-hot coded, minutes since the
  session's first scan, and any ``--covariates`` table columns (numbers standardised, text one-hot).
* ``image_stats``: ICP ~ IOP + each volume's global intensity statistics (mean, SD, percentiles,
  :mod:`icpcv.cohort.intensity`), computed from the prepared volume or taken from the table's
  ``*_pixel_intensity_y`` columns: brightness and contrast, no spatial information.

Both are ridge regressions on standardised features. The penalty is chosen on the fold's
inner-validation monkeys only (fitted on the training monkeys for each penalty on a grid, scored by
the inner-validation monkeys' mean absolute error), then the model is refitted with it on the whole
training side; the held-out monkey is touched once, for prediction. A fold without inner-validation
monkeys chooses the penalty by leave-one-monkey-out among its training monkeys. A missing number is
replaced by the training mean (after standardisation: 0); a category the training side never saw
gets zeros in every one-hot column.

A fitted nuisance baseline is kept as JSON (issue 20, :meth:`NuisanceRidge.to_state`): the columns it
reads, the encoder's means, SDs and one-hot levels, the chosen penalty and the ridge's coefficients;
``icpcv predict`` reloads it and predicts a new scan from the same numbers. A new scan without one
of those columns is refused with the columns' names.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge

from icpcv.cohort import ScanSet
from icpcv.cohort.intensity import intensity_columns
from icpcv.errors import InputError
from icpcv.models.base import FitContext, Model
from icpcv.models.baselines import from_state_value, state_value, sklearn_version

#: the penalty grid (features standardised, so the scale is that of n times a coefficient's variance)
ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 25))
#: the acquisition columns ``acq`` uses when the cohort has them
ACQ_CATEGORICAL = ("protocol", "eye")
ACQ_NUMERIC = ("session_minutes",)


class _Encoder:
    """Standardise numeric columns, one-hot code categorical ones; learned on one set of scans."""

    def __init__(self, numeric, categorical):
        self.numeric, self.categorical = list(numeric), list(categorical)

    def fit(self, frame: pd.DataFrame) -> "_Encoder":
        X = frame[self.numeric].apply(pd.to_numeric, errors="coerce").to_numpy(float) if self.numeric else \
            np.empty((len(frame), 0))
        self.mu_ = np.nanmean(X, axis=0) if len(X) else np.zeros(X.shape[1])
        sd = np.nanstd(X, axis=0) if len(X) else np.ones(X.shape[1])
        self.mu_ = np.where(np.isfinite(self.mu_), self.mu_, 0.0)
        self.sd_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.levels_ = {c: sorted(set(_text(frame[c]))) for c in self.categorical}
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        parts = []
        if self.numeric:
            X = frame[self.numeric].apply(pd.to_numeric, errors="coerce").to_numpy(float)
            Z = (X - self.mu_) / self.sd_
            parts.append(np.where(np.isfinite(Z), Z, 0.0))
        for c in self.categorical:
            vals = _text(frame[c])
            parts.append(np.column_stack([(vals == lv).astype(float) for lv in self.levels_[c]])
                         if self.levels_[c] else np.empty((len(frame), 0)))
        return np.hstack(parts) if parts else np.empty((len(frame), 0))

    def names(self) -> list[str]:
        return self.numeric + [f"{c}={lv}" for c in self.categorical for lv in self.levels_[c]]

    def to_state(self) -> dict:
        return dict(numeric=self.numeric, categorical=self.categorical, mu=state_value(self.mu_),
                    sd=state_value(self.sd_), levels={c: list(v) for c, v in self.levels_.items()})

    @classmethod
    def from_state(cls, state: dict) -> "_Encoder":
        enc = cls(state["numeric"], state["categorical"])
        enc.mu_, enc.sd_ = from_state_value(state["mu"]), from_state_value(state["sd"])
        enc.levels_ = {c: [str(x) for x in state["levels"][c]] for c in enc.categorical}
        return enc


def _text(col: pd.Series) -> np.ndarray:
    s = col.astype(str).str.strip()
    return s.mask(s.isin(["", "nan", "None", "<NA>", "NaN"]), "(unknown)").to_numpy()


class NuisanceRidge(Model):
    """A ridge regression of ICP on IOP and covariates that carry no anatomy; see the module's text."""

    name = "nuisance"
    needs_iop = True
    needs_volumes = False
    stochastic = False

    def __init__(self, context: FitContext | None = None):
        self.context = context

    def columns(self, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
        """``(numeric, categorical)`` columns of ``frame`` this model uses besides IOP."""
        raise NotImplementedError

    def _fit_alpha(self, frame: pd.DataFrame, alpha: float):
        enc = _Encoder(["iop"] + self.numeric_, self.categorical_).fit(frame)
        model = Ridge(alpha=alpha).fit(enc.transform(frame), frame["icp"].to_numpy(float))
        return enc, model

    def _score(self, fit_frame, val_frame) -> np.ndarray:
        """MAE on ``val_frame`` of the model fitted on ``fit_frame``, for each penalty of the grid."""
        enc = _Encoder(["iop"] + self.numeric_, self.categorical_).fit(fit_frame)
        X, Xv = enc.transform(fit_frame), enc.transform(val_frame)
        y, yv = fit_frame["icp"].to_numpy(float), val_frame["icp"].to_numpy(float)
        return np.asarray([np.mean(np.abs(Ridge(alpha=a).fit(X, y).predict(Xv) - yv)) for a in ALPHAS])

    def fit(self, train: ScanSet, val: ScanSet | None = None) -> "NuisanceRidge":
        tr = train.frame
        va = val.frame if val is not None else tr.iloc[:0]
        both = pd.concat([tr, va])
        self.numeric_, self.categorical_ = self.columns(both)
        if not self.numeric_ and not self.categorical_:
            raise InputError(f"{self.name}: the cohort has none of the columns this nuisance baseline reads "
                             f"({self.wants()}); docs/acquisition.md says where they come from")
        if len(va):
            mae = self._score(tr, va)
            self.alpha_chosen_on_ = f"inner validation ({va['subject'].nunique()} monkeys)"
        else:  # no inner-validation monkeys: leave one training monkey out at a time
            subjects = list(dict.fromkeys(tr["subject"]))
            mae = np.zeros(len(ALPHAS))
            for s in subjects:
                mae += self._score(tr[tr["subject"] != s], tr[tr["subject"] == s]) / len(subjects)
            self.alpha_chosen_on_ = f"leave-one-monkey-out among {len(subjects)} training monkeys"
        best = float(np.min(mae))
        # the largest penalty within 1e-9 of the best (ties: the simpler model)
        self.alpha_ = float(max(a for a, m in zip(ALPHAS, mae) if m <= best + 1e-9))
        self.val_mae_ = best
        self.encoder_, self.ridge_ = self._fit_alpha(both, self.alpha_)
        return self

    def predict(self, scans: ScanSet) -> np.ndarray:
        frame = scans.frame
        missing = [c for c in self.encoder_.numeric + self.encoder_.categorical if c not in frame.columns]
        if missing:
            raise InputError(f"{self.name}: the scans to predict lack the column(s) {', '.join(missing)} this model "
                             f"was fitted on ({self.wants()}; docs/acquisition.md)")
        return self.ridge_.predict(self.encoder_.transform(frame))

    # ---- kept as JSON (issue 20): everything predict reads, never a pickle; every float64 round-trips exactly
    #: the ridge's fitted attributes that its ``predict`` reads
    RIDGE_STATE = ("coef_", "intercept_", "n_features_in_")

    def to_state(self) -> dict:
        fitted = dict(numeric=list(self.numeric_), categorical=list(self.categorical_), alpha=self.alpha_,
                      alpha_chosen_on=self.alpha_chosen_on_, inner_mae=float(self.val_mae_),
                      encoder=self.encoder_.to_state(),
                      ridge={a: state_value(getattr(self.ridge_, a)) for a in self.RIDGE_STATE})
        return dict(name=self.name, kind="nuisance", settings={}, fitted=fitted, sklearn=sklearn_version())

    def load_state(self, state: dict) -> "NuisanceRidge":
        if state.get("name") != self.name:
            raise ValueError(f"{self.name}: the kept state is of {state.get('name')!r}")
        fitted = state["fitted"]
        self.numeric_, self.categorical_ = list(fitted["numeric"]), list(fitted["categorical"])
        self.alpha_, self.alpha_chosen_on_ = float(fitted["alpha"]), fitted["alpha_chosen_on"]
        self.val_mae_ = float(fitted["inner_mae"])
        self.encoder_ = _Encoder.from_state(fitted["encoder"])
        ridge = Ridge(alpha=self.alpha_)
        for a in self.RIDGE_STATE:  # the same scikit-learn code then predicts from the same numbers
            setattr(ridge, a, from_state_value(fitted["ridge"][a]))
        self.ridge_ = ridge
        return self

    def wants(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha_, "alpha_chosen_on": self.alpha_chosen_on_,
                "inner_mae": float(self.val_mae_), "features": self.encoder_.names(),
                "coef": [float(c) for c in self.ridge_.coef_], "intercept": float(self.ridge_.intercept_)}


def _usable(frame: pd.DataFrame, col: str) -> bool:
    """The column exists and has a value on some scan."""
    return col in frame.columns and bool(pd.Series(_text(frame[col])).ne("(unknown)").any())


class AcqBaseline(NuisanceRidge):
    """``acq``: ICP ~ IOP + protocol and eye (one-hot) + minutes since the session's first scan (+ --covariates)."""

    name = "acq"

    def wants(self) -> str:
        return ", ".join(ACQ_CATEGORICAL + ACQ_NUMERIC) + " or --covariates columns"

    def columns(self, frame):
        covariates = tuple(self.context.covariates) if self.context is not None else ()
        missing = [c for c in covariates if c not in frame.columns]
        if missing:
            raise InputError(f"--covariates: column(s) {', '.join(missing)} are not in the cohort's scan table "
                             f"(cohort/scans.csv has {', '.join(map(str, frame.columns))})")
        numeric = [c for c in ACQ_NUMERIC if _usable(frame, c)]
        categorical = [c for c in ACQ_CATEGORICAL if _usable(frame, c)]
        for c in covariates:
            if c in numeric or c in categorical or c in ("iop", "icp"):
                continue
            vals = pd.to_numeric(frame[c], errors="coerce")
            given = pd.Series(_text(frame[c])).ne("(unknown)").to_numpy()
            (numeric if vals[given].notna().all() else categorical).append(c)
        return numeric, categorical


class ImageStatsBaseline(NuisanceRidge):
    """``image_stats``: ICP ~ IOP + the volume's global intensity statistics (no spatial information)."""

    name = "image_stats"
    needs_volume_stats = True

    def wants(self) -> str:
        return "intensity_mean, intensity_sd, intensity_p.. (from the volumes, or the table's *_pixel_intensity_y)"

    def columns(self, frame):
        return [c for c in intensity_columns(frame.columns) if _usable(frame, c)], []


#: the nuisance baselines by name (icpcv.stats.analysis.NUISANCE_BASELINES spells the same names)
NUISANCE = {"acq": AcqBaseline, "image_stats": ImageStatsBaseline}
