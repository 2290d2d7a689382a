"""The run directory: the one place that knows the names of a run's files and folders.

Everything else asks a :class:`RunDir` (or its :class:`FoldDir` and :class:`CohortDir`) for a
path, and reads and writes through it; every write is atomic. Layout::

    run.json            the run record (RunRecord): config, its hash, fold plan and data hashes, the key
    config.json         the configuration as given
    environment.json    versions, git hash, hardware
    cohort/             scans.csv, cohort.json (+ volumes.npy, volumes.json, truth.json, volumes/)
    data_quality.csv    every input row: kept or dropped, and why
    fold_plan.json      frozen before training, with its hash
    leakage_audit.json  the fold plan's audit: no monkey on both sides of a fold
    folds/fold_NN/      record.json (complete when it says so), predictions.csv, learning_curve.csv,
                        <model>_checkpoint.pt (last epoch; deleted once complete), <model>_weights.pt,
                        fold.log, status.json, error.json (why the last attempt failed), .lock
                        saliency_<model>.npz (run --saliency N: attribution maps of held-out scans)
                        <model>_model.json (every fitted model kept as JSON: coefficients, scaling; issue 20)
    folds/fold_NN/repeat_RR/   with ``--repeats R``: repeat RR (1 to R-1) of the fold's networks, the
                        same files; repeat 0 is the fold's own folder, which also trains the baselines
    slurm/              jobs.json (the unit -> Slurm task map), one submitit folder per submission
    preprocessing.json  what a new scan must repeat to be predicted (shape, resampling, voxel scale; issue 20)
    predictions.csv     out-of-fold predictions, long format (with ``repeat`` when networks were repeated)
    predictions_ensemble.csv   with repeats: the seed ensemble (per model and scan, the mean of its repeats)
    stats.json          the analysis
    figures/*.png, index.html
    leakage.json, scan_split/   with the leakage audit: the scan-level twin (a run directory itself)
    power.json          `icpcv power`: the power of a new study, for this run's predictions (figures/power.png)
    attribution.json, attribution_maps.npz   run --saliency N: region shares, sanity check, cost; mean maps
    tuning_plan.json, tuning.json, tuning_candidates.csv   run --tune: the inner plans (frozen before training),
                        per outer fold every candidate's inner MAE and the choice, every candidate's outer predictions;
                        the units in folds/fold_NN/tune/cand_CC/inner_JJ/ and .../cand_CC/ (its outer fit)

A comparison directory (``icpcv compare``) holds compare.json, and an analysis directory
(``icpcv analyze TABLE --out DIR`` outside a run) analysis.json, each beside predictions.csv,
stats.json, figures/ and index.html.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from icpcv.config import RunConfig
from icpcv.errors import RunDirError
from icpcv.util import atomic_write_json, atomic_write_text, canonical_hash, file_sha256, read_json, visible_table

#: the columns of a predictions table, in order (``iop`` where known)
PREDICTION_COLUMNS = ["fold", "subject", "scan_id", "model", "y_true", "y_pred", "iop"]
#: with ``--repeats R`` > 1: the training repeat of a network's row (0 to R-1; empty for the baselines)
REPEAT_COLUMN = "repeat"
#: how the pipeline reads the tables it wrote: labels as text
_LABELS = {"subject": str, "scan_id": str, "model": str}


@dataclass(frozen=True, order=True)
class Unit:
    """One unit of work: repeat ``repeat`` of fold ``fold``. Repeat 0 trains every model of the fold;
    repeats 1 to R-1 (``--repeats R``) train its networks again with other seeds. Each unit is run,
    locked, resumed and recorded on its own, by every executor."""

    fold: int
    repeat: int = 0
    # ---- issue 21 (run --tune): a candidate recipe's training inside outer fold ``fold``; -1 = a plain unit
    candidate: int = -1  # index of the candidate in the tuning spec
    inner: int = -1  # its inner fold (trained on the outer fold's training monkeys only); -1 = the outer fit

    @property
    def tuning(self) -> bool:
        """A unit of ``run --tune`` (a candidate's inner-fold training or its fit on the outer fold)."""
        return self.candidate >= 0

    @property
    def key(self) -> str:
        """``"7"`` for fold 7 (repeat 0), ``"7.2"`` for its repeat 2 (the keys of slurm/jobs.json); with
        ``--tune``, ``"7.c3.i4"`` for candidate 3's inner fold 4 and ``"7.2.c3"`` for its outer fit's repeat 2."""
        text = str(self.fold) if self.repeat == 0 else f"{self.fold}.{self.repeat}"
        if self.tuning:
            text += f".c{self.candidate}" + (f".i{self.inner}" if self.inner >= 0 else "")
        return text

    @classmethod
    def parse(cls, key) -> "Unit":
        parts = str(key).split(".")
        fold, repeat, candidate, inner = int(parts[0]), 0, -1, -1
        for part in parts[1:]:
            if part.startswith("c"):
                candidate = int(part[1:])
            elif part.startswith("i"):
                inner = int(part[1:])
            else:
                repeat = int(part)
        return cls(fold, repeat, candidate, inner)

    @classmethod
    def of(cls, unit) -> "Unit":
        """A Unit as it is, or a plain fold number as that fold's repeat 0 (how callers before repeats said it)."""
        return unit if isinstance(unit, Unit) else cls(int(unit))

    def label(self, n_repeats: int | None = None, n_folds: int | None = None) -> str:
        """For people, 1-based: ``"fold 8"``; with the run's repeats ``"fold 8 repeat 3/5"`` (no repeat when
        R = 1); with its folds ``"fold 8/14 repeat 3/5"``; without ``n_repeats``, ``"fold 8 repeat 3"``
        for a repeat above 0 (where R is not at hand)."""
        text = f"fold {self.fold + 1}" + (f"/{n_folds}" if n_folds else "")
        if self.tuning:  # issue 21: "fold 8 candidate 2 inner 4" / "fold 8 candidate 2 (outer fit)"
            text += f" candidate {self.candidate + 1}" + (f" inner {self.inner + 1}" if self.inner >= 0 else
                                                           " (outer fit)")
        if n_repeats is None:
            return text + (f" repeat {self.repeat + 1}" if self.repeat else "")
        return text + (f" repeat {self.repeat + 1}/{n_repeats}" if n_repeats > 1 and self.inner < 0 else "")


def run_key(config_hash: str, plan_hash: str, data_hash: str) -> str:
    return canonical_hash([config_hash, plan_hash, data_hash])


@dataclass
class RunRecord:
    """``run.json``: what this run is (its config and the hashes that name it) and when it ran."""

    config: RunConfig
    config_hash: str
    plan_hash: str
    data_hash: str
    key: str  # run_key(config_hash, plan_hash, data_hash): a fold is complete only for this key
    n_folds: int
    created: str
    sessions: list[dict] = field(default_factory=list)  # one entry per (re)start: time, host, git, torch, gpu
    #: issue 21 (run --tune): the tuning units' shape, from tuning_plan.json: ``inner`` = inner folds per
    #: outer fold, ``repeats`` = outer-fit repeats per candidate; None (and absent from run.json) without --tune
    tuning: dict | None = None

    def to_dict(self) -> dict:
        d = dict(config=self.config.to_dict(), config_hash=self.config_hash, plan_hash=self.plan_hash,
                 data_hash=self.data_hash, key=self.key, n_folds=self.n_folds, created=self.created,
                 sessions=list(self.sessions))
        if self.tuning is not None:
            d["tuning"] = self.tuning
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        return cls(config=RunConfig.from_dict(d["config"]), config_hash=d["config_hash"], plan_hash=d["plan_hash"],
                   data_hash=d["data_hash"], key=d["key"], n_folds=int(d["n_folds"]), created=d.get("created", ""),
                   sessions=list(d.get("sessions") or []), tuning=d.get("tuning"))


# --------------------------------------------------------------------------- locks


class _ExclusiveLock:
    """An exclusive, non-blocking flock on a file that records who holds it."""

    path: Path

    def _busy(self, who: str) -> str:
        raise NotImplementedError

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            who = self.fh.read().strip() or "another process"
            self.fh.close()
            self.fh = None
            raise RunDirError(self._busy(who)) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {platform.node()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


class RunLock(_ExclusiveLock):
    """One run at a time per directory: an exclusive flock on ``DIR/.lock``."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / ".lock"
        self.fh = None

    def _busy(self, who: str) -> str:
        return (f"{self.path.parent}: another icpcv run ({who}) is using this run directory; "
                "wait for it to finish or choose another --out")


class FoldLock(_ExclusiveLock):
    """One process per fold: an exclusive flock on ``folds/fold_NN/.lock`` while the fold runs.

    Guards against two executors (say a Slurm task left from an earlier submission and a local
    rerun) writing the same fold's checkpoints at once.
    """

    def __init__(self, fold: "FoldDir"):
        self.path = fold.path / ".lock"
        self.k = fold.k
        self.repeat = fold.repeat
        self.fh = None

    def _busy(self, who: str) -> str:
        what = f"fold {self.k}" + (f" repeat {self.repeat}" if self.repeat else "")
        return (f"{self.path.parent}: {what} is being run by {who}; wait for it to end "
                "(or cancel it, e.g. scancel its Slurm task) and rerun")


class _Folder:
    """A folder whose files are named in one table, ``FILES`` (attribute -> path inside the folder)."""

    FILES: dict[str, str] = {}
    path: Path

    def __getattr__(self, name: str) -> Path:
        files = type(self).FILES
        if name in files:
            return self.path / files[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


# --------------------------------------------------------------------------- a fold's folder


class FoldDir(_Folder):
    """``folds/fold_NN/`` (repeat 0) or ``folds/fold_NN/repeat_RR/``: one unit's files."""

    FILES = {"record_json": "record.json", "predictions_csv": "predictions.csv",
             "learning_curve_csv": "learning_curve.csv", "log": "fold.log", "status_json": "status.json",
             "error_json": "error.json"}

    def __init__(self, run_path: Path, k: int, repeat: int = 0, candidate: int = -1, inner: int = -1):
        self.k = int(k)
        self.repeat = int(repeat)
        self.candidate, self.inner = int(candidate), int(inner)
        self.path = Path(run_path) / "folds" / f"fold_{self.k:02d}"
        if self.candidate >= 0:  # issue 21: folds/fold_NN/tune/cand_CC/(inner_JJ | repeat_RR)
            self.path = self.path / "tune" / f"cand_{self.candidate:02d}"
            if self.inner >= 0:
                self.path = self.path / f"inner_{self.inner:02d}"
        if self.repeat:
            self.path = self.path / f"repeat_{self.repeat:02d}"

    @property
    def unit(self) -> Unit:
        return Unit(self.k, self.repeat, self.candidate, self.inner)

    def checkpoint(self, model: str) -> Path:
        """The epoch checkpoint of a network (deleted once the fold is complete)."""
        return self.path / f"{model}_checkpoint.pt"

    def weights(self, model: str) -> Path:
        """The trained network's weights (state dict of tensors)."""
        return self.path / f"{model}_weights.pt"

    # ---- issue 20: every fitted model kept (what `icpcv predict` reloads)
    def model_state(self, model: str) -> Path:
        """A fitted model as JSON (``Model.to_state``): a baseline's coefficients and scaling, a network's
        standardisation and architecture beside its ``<model>_weights.pt``. Never a pickle."""
        return self.path / f"{model}_model.json"

    def write_model_state(self, model: str, state: dict) -> None:
        atomic_write_json(self.model_state(model), state)

    def read_model_state(self, model: str) -> dict:
        return read_json_file(self.model_state(model))

    # ---- issue 14: attribution maps (run --saliency N), written before record.json like the predictions
    def saliency(self, model: str) -> Path:
        """A network's attribution maps of the fold's held-out scans (``AttributionMaps`` npz)."""
        return self.path / f"saliency_{model}.npz"

    def _saliency_intact(self, record: dict) -> bool:
        """The maps the record names (``saliency``: model -> {sha256}) are on disk unchanged."""
        for model, info in (record.get("saliency") or {}).items():
            try:
                if file_sha256(self.saliency(model)) != info.get("sha256"):
                    return False
            except OSError:
                return False
        return True

    def checkpoints(self) -> list[Path]:
        return sorted(self.path.glob("*_checkpoint.pt"))

    @staticmethod
    def model_of_checkpoint(path: Path) -> str:
        return Path(path).name.replace("_checkpoint.pt", "")

    def lock(self) -> FoldLock:
        return FoldLock(self)

    def read_record(self) -> dict | None:
        try:
            return read_json(self.record_json)
        except (OSError, ValueError):
            return None

    def write_record(self, record: dict) -> None:
        atomic_write_json(self.record_json, record)  # written last: the fold is complete only now

    def complete(self, key: str) -> bool:
        """Complete = record.json says so for this run key, and the predictions it names are on disk unchanged."""
        r = self.read_record()
        if not r or r.get("status") != "complete" or r.get("key") != key:
            return False
        if not self.predictions_csv.exists():
            return False
        if not self._saliency_intact(r):  # issue 14
            return False
        want = r.get("predictions_sha256")
        if want is not None:
            try:
                return file_sha256(self.predictions_csv) == want
            except OSError:
                return False
        return True

    def write_predictions(self, predictions: pd.DataFrame) -> str:
        """Write the fold's predictions; returns their sha256 (for the record)."""
        atomic_write_text(self.predictions_csv, predictions.to_csv(index=False))
        return file_sha256(self.predictions_csv)

    def read_predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.predictions_csv, dtype={"subject": str, "scan_id": str, REPEAT_COLUMN: "Int64"})

    def write_learning_curve(self, curves: pd.DataFrame) -> None:
        atomic_write_text(self.learning_curve_csv, curves.to_csv(index=False))

    def read_learning_curve(self) -> pd.DataFrame | None:
        if not self.learning_curve_csv.exists():
            return None
        return read_csv_file(self.learning_curve_csv, dtype={"model": str})

    def clean_stale_temps(self) -> None:
        """Remove temporary files of atomic writes that a killed process left behind (never a final name)."""
        for p in self.path.glob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    def remove_checkpoints(self, models) -> None:
        for name in models:
            ck = self.checkpoint(name)
            if ck.exists():
                ck.unlink()

    # ---- why the last attempt failed
    def write_error(self, exc: BaseException, log: str | None = None) -> dict:
        """Record why the fold failed (error.json); never raises (the disk may be full)."""
        err = dict(fold=self.k, **({"repeat": self.repeat} if self.repeat else {}), type=type(exc).__name__, message=str(exc), host=socket.gethostname(), pid=os.getpid(),
                   time=datetime.now(timezone.utc).isoformat(timespec="seconds"), log=log,
                   traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        try:
            atomic_write_json(self.error_json, err)
        except Exception:
            pass
        return err

    def read_error(self) -> dict | None:
        try:
            return read_json(self.error_json)
        except (OSError, ValueError):
            return None

    def clear_error(self) -> None:
        try:
            self.error_json.unlink()
        except FileNotFoundError:
            pass

    # ---- the latest progress line, for executors that watch from another process
    def write_status(self, text: str) -> None:
        """Replaced atomically but not fsynced: it is a display, not a result."""
        tmp = self.path / f".status.json.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(dict(text=text, time=time.time(), host=socket.gethostname(), pid=os.getpid())))
            os.replace(tmp, self.status_json)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass

    def read_status(self) -> dict | None:
        try:
            return json.loads(self.status_json.read_text())
        except (OSError, ValueError):
            return None


# --------------------------------------------------------------------------- the cohort's folder


class CohortDir(_Folder):
    """``cohort/``: the scans a run uses and, where icpcv holds them, their volumes."""

    FILES = {"scans_csv": "scans.csv", "meta_json": "cohort.json", "volumes_npy": "volumes.npy",
             "volumes_json": "volumes.json", "truth_json": "truth.json",
             "volumes_dir": "volumes"}  # volumes/: the seed-scale phantom, one file per scan

    def __init__(self, path: Path):
        self.path = Path(path)

    #: acquisition columns (icpcv.cohort.geometry.ACQ_COLUMNS, docs/acquisition.md): numbers with an
    #: empty cell for unknown, and text read as text (a protocol "5" stays "5")
    ACQ_NUMBERS = ("fov_x_mm", "fov_y_mm", "depth_mm", "session_minutes", "spacing_x_mm", "spacing_y_mm",
                   "spacing_z_mm", "voxel_x_um", "voxel_y_um", "voxel_z_um")
    ACQ_TEXT = ("eye", "acquired_at", "session", "protocol", "device", "scan_shape", "notes")

    def read_scans(self) -> pd.DataFrame:
        return pd.read_csv(self.scans_csv, dtype={"scan_id": str, "subject": str, "path": str,
                                                  **{c: str for c in self.ACQ_TEXT}},
                           keep_default_na=False,
                           na_values={"iop": [""], "icp": [""], **{c: [""] for c in self.ACQ_NUMBERS}})

    def read_meta(self) -> dict:
        return read_json(self.meta_json)


# --------------------------------------------------------------------------- the run directory


class RunDir(_Folder):
    """A run directory (or a comparison or analysis directory): names, reads and writes its files."""

    FILES = {"run_json": "run.json", "config_json": "config.json", "environment_json": "environment.json",
             "data_quality_csv": "data_quality.csv", "fold_plan_json": "fold_plan.json",
             "plan_audit_json": "leakage_audit.json", "predictions_csv": "predictions.csv",
             "stats_json": "stats.json", "index_html": "index.html", "figures_dir": "figures",
             "slurm_dir": "slurm", "slurm_jobs_json": "slurm/jobs.json", "leakage_json": "leakage.json",
             "compare_json": "compare.json", "analysis_json": "analysis.json", "power_json": "power.json",
             "predictions_ensemble_csv": "predictions_ensemble.csv",
             "attribution_json": "attribution.json", "attribution_maps_npz": "attribution_maps.npz",  # issue 14
             "preprocessing_json": "preprocessing.json",  # issue 20: what a new scan must repeat
             # issue 21 (run --tune): the inner plans, the selection, every candidate's outer predictions
             "tuning_plan_json": "tuning_plan.json", "tuning_json": "tuning.json",
             "tuning_candidates_csv": "tuning_candidates.csv"}

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def cohort(self) -> CohortDir:
        return CohortDir(self.path / "cohort")

    #: where ``run --leakage-audit`` puts the scan-level twin of a run
    SCAN_SPLIT = "scan_split"
    CALIBRATION_FILES = ("calibration.json", "calibration.csv")

    @property
    def scan_split(self) -> "RunDir":
        return RunDir(self.path / self.SCAN_SPLIT)

    def fold(self, k: int, repeat: int = 0) -> FoldDir:
        return FoldDir(self.path, k, repeat)

    def unit(self, unit: Unit) -> FoldDir:
        return FoldDir(self.path, unit.fold, unit.repeat, unit.candidate, unit.inner)

    def figure_png(self, stem: str) -> Path:
        return self.figures_dir / f"{stem}.png"

    def lock(self) -> RunLock:
        return RunLock(self.path)

    # ---- what kind of directory
    @property
    def kind(self) -> str | None:
        """"run", "comparison", "analysis" (a predictions table analysed outside a run) or None."""
        if self.run_json.exists():
            return "run"
        if self.compare_json.exists():
            return "comparison"
        if self.analysis_json.exists():
            return "analysis"
        return None

    def has_results(self) -> bool:
        """A run record or fold results (what ``--fresh`` discards)."""
        return self.run_json.exists() or (self.path / "folds").exists()

    # ---- the run record
    def read_record(self) -> RunRecord:
        if not self.run_json.exists():
            raise RunDirError(f"{self.path}: not a run directory (no run.json)")
        try:
            return RunRecord.from_dict(read_json(self.run_json))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"{self.run_json}: cannot read the run record ({exc}); rerun with --fresh to start this "
                              "run directory over, or use another --out") from None

    def write_record(self, record: RunRecord) -> None:
        atomic_write_json(self.run_json, record.to_dict())

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_json(self.config_json, cfg.to_dict())

    def write_environment(self, env: dict) -> None:
        atomic_write_json(self.environment_json, env)

    # ---- issue 20: the preprocessing a new scan must repeat (icpcv.cohort.preprocessing)
    def write_preprocessing(self, data: dict) -> None:
        atomic_write_json(self.preprocessing_json, data)

    def read_preprocessing(self) -> dict | None:
        return read_json_file(self.preprocessing_json) if self.preprocessing_json.exists() else None

    # ---- the cohort, the plan and its audit
    def write_quality(self, quality: pd.DataFrame) -> None:
        atomic_write_text(self.data_quality_csv, visible_table(quality).to_csv(index=False))

    def read_quality(self) -> pd.DataFrame:
        return read_csv_file(self.data_quality_csv, dtype=str, keep_default_na=False)

    def write_plan(self, plan_dict: dict) -> None:
        atomic_write_json(self.fold_plan_json, plan_dict)

    def read_plan_dict(self) -> dict:
        return read_json_file(self.fold_plan_json)

    def write_plan_audit(self, audit: dict) -> None:
        atomic_write_json(self.plan_audit_json, audit)

    def read_plan_audit(self) -> dict:
        return read_json_file(self.plan_audit_json)

    def plan_audit_failed(self) -> bool:
        """The run's fold-plan audit exists and failed (its numbers then carry a warning)."""
        return self.plan_audit_json.exists() and not self.read_plan_audit().get("passed", True)

    def held_out(self, k: int) -> list[str]:
        """The monkeys fold ``k`` holds out, from the fold plan ([] when it cannot be read)."""
        try:
            return self.read_plan_dict()["folds"][k]["held_out"]
        except (RunDirError, KeyError, IndexError, TypeError):
            return []

    # ---- folds
    @staticmethod
    def units(record: RunRecord) -> list[Unit]:
        """Every unit of the run, fold by fold: (0, 0), (0, 1), ..., (1, 0), ...; with ``--tune`` (issue 21)
        then the tuning units (:meth:`tuning_units`)."""
        return RunDir.plain_units(record) + RunDir.tuning_units(record)

    @staticmethod
    def plain_units(record: RunRecord) -> list[Unit]:
        """The units that train ``--models`` (their predictions make predictions.csv)."""
        return [Unit(k, r) for k in range(record.n_folds) for r in range(record.config.repeats)]

    @staticmethod
    def tuning_units(record: RunRecord) -> list[Unit]:
        """Issue 21: per outer fold and candidate, every inner-fold training (repeat 0), then the candidate's
        fit on the outer fold's training monkeys (each repeat); none without ``--tune``."""
        t = record.tuning
        if not t:
            return []
        out = []
        for k in range(record.n_folds):
            for c, reps in enumerate(t["repeats"]):
                out += [Unit(k, 0, c, j) for j in range(int(t["inner"][k]))]
                out += [Unit(k, r, c) for r in range(int(reps))]
        return out

    def unit_complete(self, unit: Unit, key: str) -> bool:
        return self.unit(unit).complete(key)

    def incomplete_units(self, record: RunRecord) -> list[Unit]:
        return [u for u in self.units(record) if not self.unit_complete(u, record.key)]

    # ---- predictions and statistics
    def read_predictions(self, path: Path | None = None) -> pd.DataFrame:
        """A predictions table icpcv wrote (this directory's, or ``path``), labels as text; RunDirError
        names the file when it cannot be read or lacks a column."""
        path = Path(path) if path is not None else self.predictions_csv
        preds = read_csv_file(path, dtype=_LABELS)
        need = {"subject", "scan_id", "model", "y_true", "y_pred"}
        if not need <= set(preds.columns):
            raise RunDirError(f"{path}: lacks the column(s) {', '.join(sorted(need - set(preds.columns)))}")
        return preds

    def write_predictions(self, predictions: pd.DataFrame) -> None:
        atomic_write_text(self.predictions_csv, predictions.to_csv(index=False))

    def write_ensemble(self, ensemble: pd.DataFrame | None) -> None:
        """``predictions_ensemble.csv`` (the seed ensemble); None removes a stale one."""
        if ensemble is None:
            self.predictions_ensemble_csv.unlink(missing_ok=True)
        else:
            atomic_write_text(self.predictions_ensemble_csv, ensemble.to_csv(index=False))

    def gather_predictions(self, record: RunRecord) -> pd.DataFrame:
        """The units' predictions in unit order (fold by fold, repeat by repeat); every unit must be
        complete. With repeats, the column ``repeat`` (nullable integer: empty for the baselines)."""
        missing = self.incomplete_units(record)
        if missing:
            shown = ", ".join(u.label(record.config.repeats) for u in missing[:10])
            raise RunDirError(f"{self.path}: not complete: {shown}{', ...' if len(missing) > 10 else ''}; "
                              "rerun the same command to finish them")
        columns = PREDICTION_COLUMNS + ([REPEAT_COLUMN] if record.config.repeats > 1 else [])
        parts = [self.unit(u).read_predictions() for u in self.plain_units(record)]
        return pd.concat([p for p in parts if len(p)] or parts, ignore_index=True)[columns]  # issue 21: empty repeats

    def read_stats(self) -> dict:
        return read_json_file(self.stats_json)

    def write_report_html(self, html: str) -> Path:
        atomic_write_text(self.index_html, html)
        return self.index_html

    # ---- the leakage audit of `run --leakage-audit`
    def write_scan_split_audit(self, data: dict) -> None:
        atomic_write_json(self.leakage_json, data)

    def scan_split_audit(self, record: RunRecord | None = None) -> dict | None:
        """``leakage.json`` when it belongs to this run (same run key, twin still as audited), else None."""
        if not self.leakage_json.exists():
            return None
        data = read_json(self.leakage_json)
        key = (record or self.read_record()).key
        twin = RunDir(self.path / data.get("scan_split_dir", self.SCAN_SPLIT))
        if data.get("run_key") != key or not twin.run_json.exists() or \
                read_json(twin.run_json).get("key") != data.get("scan_split_run_key"):
            return None
        return data

    # ---- issue 21: run --tune
    def write_tuning_plan(self, data: dict) -> None:
        atomic_write_json(self.tuning_plan_json, data)

    def read_tuning_plan(self) -> dict:
        return read_json_file(self.tuning_plan_json)

    def write_tuning(self, data: dict, candidates: pd.DataFrame) -> None:
        """tuning.json and tuning_candidates.csv (the table first: tuning.json names its sha256)."""
        atomic_write_text(self.tuning_candidates_csv, candidates.to_csv(index=False))
        atomic_write_json(self.tuning_json, data | {"candidates_sha256": file_sha256(self.tuning_candidates_csv)})

    def read_tuning(self) -> dict | None:
        """tuning.json, or None when the run has none."""
        return read_json_file(self.tuning_json) if self.tuning_json.exists() else None

    def read_tuning_candidates(self) -> pd.DataFrame:
        return self.read_predictions(self.tuning_candidates_csv)

    # ---- the power of a new study (`icpcv power`)
    def write_power(self, data: dict) -> None:
        atomic_write_json(self.power_json, data)

    def predictions_key(self) -> dict:
        """What ``power.json`` was made for: the run key (None outside a run) and predictions.csv's sha256."""
        return dict(run_key=self.read_record().key if self.run_json.exists() else None,
                    predictions_sha256=file_sha256(self.predictions_csv))

    def power(self) -> dict | None:
        """``power.json`` when it was made for this directory's current predictions (same run key and
        predictions.csv), else None; RunDirError when it cannot be read."""
        if not self.power_json.exists():
            return None
        data = read_json_file(self.power_json)
        made_for = data.get("made_for") if isinstance(data, dict) else None
        if not isinstance(made_for, dict) or made_for != self.predictions_key():
            return None
        return data

    # ---- comparison and analysis directories
    def read_meta(self) -> dict:
        """compare.json or analysis.json, whichever this directory has."""
        return read_json_file(self.compare_json if self.compare_json.exists() else self.analysis_json)

    def write_compare_meta(self, meta: dict) -> None:
        atomic_write_json(self.compare_json, meta)

    def write_analysis_meta(self, meta: dict) -> None:
        atomic_write_json(self.analysis_json, meta)

    # ---- Slurm
    def read_slurm_jobs(self) -> dict[Unit, dict]:
        try:
            return {Unit.parse(k): v for k, v in read_json(self.slurm_jobs_json).items()}
        except (OSError, ValueError):
            return {}

    def write_slurm_jobs(self, jobs: dict[Unit, dict]) -> None:
        atomic_write_json(self.slurm_jobs_json, {u.key: v for u, v in sorted(jobs.items())})


def read_json_file(path: Path):
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: cannot read as JSON ({exc})") from None


def read_csv_file(path: Path, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kw)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise RunDirError(f"{path}: cannot read as CSV ({exc})") from None
