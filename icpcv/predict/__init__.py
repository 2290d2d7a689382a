"""Prediction for new monkeys (``icpcv predict``): a run's kept fold models as an ensemble, with an
interval from the run's out-of-fold residuals that holds at the monkey level (docs/prediction.md).

* :mod:`icpcv.predict.kept`: a finished run's kept models, reloaded (refusing runs that cannot serve);
* :mod:`icpcv.predict.core`: the new table checked and preprocessed as the run did, the ensemble, the
  intervals, the output folder;
* :mod:`icpcv.predict.page`: its HTML page;
* :mod:`icpcv.predict.coverage`: the coverage benchmark over new phantom monkeys.
"""
from icpcv.predict.core import PredictConfig, predict

__all__ = ["PredictConfig", "predict"]
