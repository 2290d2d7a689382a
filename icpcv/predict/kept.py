"""A finished run's kept models: which there are, and each (fold, repeat) model reloaded.

Every unit of a run keeps every model it fitted (``folds/fold_NN[/repeat_RR]/<model>_model.json``,
and a network's ``<model>_weights.pt``): repeat 0 of a fold holds every model, repeats 1 to R-1
the networks trained again. :class:`KeptRun` refuses what cannot give a monkey-level prediction:
a run that is not complete, a run made before models were kept, a run split by scans.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from icpcv.errors import InputError, RunDirError
from icpcv.models import FitContext, make_model
from icpcv.rundir import RunDir, RunRecord, Unit
from icpcv.stats.study import primary_predictions


@dataclass
class KeptModel:
    unit: Unit
    name: str
    model: object  # a fitted icpcv Model


class KeptRun:
    """A complete, monkey-split run whose fold models were kept."""

    def __init__(self, run_dir):
        self.run = RunDir(run_dir)
        if not self.run.run_json.exists():
            raise RunDirError(f"{self.run.path}: not a run directory (no run.json); give the --out of an `icpcv run`")
        self.record: RunRecord = self.run.read_record()
        cfg = self.record.config
        if cfg.split != "subjects":
            raise RunDirError(f"{self.run.path}: this run was trained with --split {cfg.split}; its out-of-fold "
                              "residuals come from models that saw the scored monkeys, so no interval for a new monkey "
                              "can be built from them. Predict with a run split by subjects (the default)")
        missing = self.run.incomplete_units(self.record)
        if missing:
            raise RunDirError(f"{self.run.path}: not complete ({', '.join(u.label(cfg.repeats) for u in missing[:5])}"
                              f"{', ...' if len(missing) > 5 else ''}); finish it with the same `icpcv run` command")
        self.models = list(cfg.models)
        self.preprocessing = self.run.read_preprocessing()

    def _check_kept(self, names) -> None:
        unkept = [m for m in names if not all(self.run.unit(u).model_state(m).exists() for u in self.units(m))]
        if unkept:
            raise RunDirError(f"{self.run.path}: the run kept no fitted model for {', '.join(unkept)} (no "
                              f"{self.run.unit(self.units(unkept[0])[0]).model_state(unkept[0]).name} in its folds): "
                              "it was made before icpcv kept every fold's models (or the model cannot be kept). "
                              "Train it again with this version (the same `icpcv run` command with --fresh, or another "
                              "--out), or leave it out of --models")

    def check_models(self, names) -> list[str]:
        """``--models`` against the run's: every name must be one of them."""
        names = [n.strip() for n in (names or self.models) if n and n.strip()]
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise InputError(f"--models: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not in the run "
                             f"{self.run.path} (its models: {', '.join(self.models)})")
        if len(set(names)) != len(names):
            raise InputError(f"--models names a model twice: {','.join(names)}")
        self._check_kept(names)
        return names

    def units(self, name: str) -> list[Unit]:
        """The units that fitted ``name``: every repeat for a network, repeat 0 for a deterministic model."""
        stochastic = make_model(name).stochastic
        return [u for u in RunDir.units(self.record) if u.repeat == 0 or stochastic]

    def load(self, name: str, device: str = "cpu") -> list[KeptModel]:
        """Every fold (and repeat) model of ``name``, reloaded from its JSON state (and tensors-only weights)."""
        cfg = self.record.config
        shape = tuple(self.preprocessing["shape"]) if self.preprocessing and self.preprocessing.get("volumes") else None
        out = []
        for u in self.units(name):
            fold = self.run.unit(u)
            context = FitContext(train=cfg.train, shape=shape, device=device, weights=fold.weights(name),
                                 shortcut_grad=cfg.shortcut_grad)
            try:
                model = make_model(name, context).load_state(fold.read_model_state(name))
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise RunDirError(f"{fold.model_state(name)}: cannot reload {name} ({type(exc).__name__}: {exc})") \
                    from None
            out.append(KeptModel(u, name, model))
        return out

    def out_of_fold(self) -> pd.DataFrame:
        """The run's out-of-fold predictions the statistics speak of (with repeats, the seed ensemble)."""
        return primary_predictions(self.run.read_predictions())

    def training_subjects(self) -> set[str]:
        return set(self.run.cohort.read_scans()["subject"].astype(str))
