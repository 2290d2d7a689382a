"""Reading a run directory (or a comparison or analysis directory) for the report, as it is on disk.

Nothing here computes a statistic: the numbers come from ``stats.json`` (read into an
:class:`~icpcv.stats.results.AnalysisResult`); the tables read here (predictions, data quality,
learning curves, fold records) are only drawn or listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv.errors import RunDirError
from icpcv.rundir import RunDir, RunRecord, read_csv_file, read_json_file
from icpcv.stats.power import PowerResult
from icpcv.stats.repeats import TrainingVariance
from icpcv.stats.results import AcquisitionResult, AnalysisResult
from icpcv.stats.study import primary_predictions  # the figures draw what the statistics speak of
from icpcv.stats.trending import TrendingResult
from icpcv.util import file_sha256, natural_sorted


def _required(run: RunDir) -> dict[Path, str]:
    """Files a finished run must have, with what to do when one is missing (the first decides the kind)."""
    rerun = "rerun `icpcv run` with the same --out"
    return {run.run_json: "not a run directory; point at a folder written by `icpcv run` (or by `icpcv compare` or "
                          "`icpcv analyze`)",
            run.fold_plan_json: f"the run stopped before its fold plan was written; {rerun}",
            run.plan_audit_json: f"the run stopped before its leakage audit was written; {rerun}",
            run.data_quality_csv: f"the run stopped before its cohort was written; {rerun}",
            run.cohort.scans_csv: f"the run stopped before its cohort was written; {rerun}",
            run.predictions_csv: f"the folds are not all gathered; {rerun} to finish them",
            run.stats_json: "the run was not analysed; rerun `icpcv run` with the same --out (or `icpcv analyze`)"}


def _required_compare(run: RunDir) -> dict[Path, str]:
    return {run.compare_json: "not a comparison directory",
            run.predictions_csv: "the comparison is incomplete; rerun `icpcv compare`",
            run.stats_json: "the comparison is incomplete; rerun `icpcv compare`"}


def _required_analysis(run: RunDir) -> dict[Path, str]:
    return {run.analysis_json: "not an analysis directory",
            run.predictions_csv: "the analysis is incomplete; rerun `icpcv analyze` with the same --out",
            run.stats_json: "the analysis is incomplete; rerun `icpcv analyze` with the same --out"}


def _missing(run: RunDir, required: dict[Path, str], what: str = "run") -> None:
    if not run.path.is_dir():
        raise RunDirError(f"{run.path}: no such {what} directory")

    def name(p: Path) -> str:
        return str(p.relative_to(run.path))

    gone = [p for p in required if not p.exists()]
    first = next(iter(required))
    if first in gone:
        raise RunDirError(f"{run.path}: {required[first]} (no {name(first)})")
    if gone:
        raise RunDirError(f"{run.path}: not a complete {what}: {', '.join(name(p) for p in gone)} missing "
                          f"({required[gone[0]]})")


def read_stats(run: RunDir) -> AnalysisResult:
    return AnalysisResult.from_dict(run.read_stats())


def read_calibration(run: RunDir) -> pd.DataFrame | None:
    """A calibration table when the run has one: ``calibration.json`` (a list of rows, or a dict
    holding one under ``rows``/``table``) or ``calibration.csv``; None when absent."""
    for name in RunDir.CALIBRATION_FILES:
        p = run.path / name
        if not p.exists():
            continue
        if name.endswith(".csv"):
            return read_csv_file(p)
        data = read_json_file(p)
        if isinstance(data, dict):
            data = data.get("rows", data.get("table", data))
        if isinstance(data, dict):  # column -> values, or one row
            try:
                return pd.DataFrame(data)
            except ValueError:
                return pd.DataFrame([data])
        return pd.DataFrame(data)
    return None


def read_training_variance(stats: AnalysisResult) -> TrainingVariance | None:
    """stats.json's ``training_variance`` section (``--repeats``), read back (None when absent)."""
    block = stats.extra.get("training_variance")
    return None if block is None else TrainingVariance.from_dict(block)


def read_acquisition(stats: AnalysisResult) -> AcquisitionResult | None:
    """stats.json's ``acquisition`` section (issue 19), read back with its own ``from_dict`` (None when absent)."""
    block = stats.extra.get("acquisition")
    return None if block is None else AcquisitionResult.from_dict(block)


def read_trending(stats: AnalysisResult) -> TrendingResult | None:
    """stats.json's ``trending`` section, read back with its own ``from_dict`` (None when absent)."""
    block = stats.extra.get("trending")
    return None if block is None else TrendingResult.from_dict(block)


def read_power(run: RunDir, notes: list[str]) -> PowerResult | None:
    """``power.json`` (``icpcv power``) when it was made for this directory's predictions; otherwise None,
    with a note saying why it is not shown."""
    if not run.power_json.exists():
        return None
    try:
        data = run.power()
    except RunDirError as exc:
        notes.append(f"power.json cannot be read ({exc}); the power section is not shown")
        return None
    if data is None:
        notes.append("power.json was made for other predictions (an earlier version of this run); the power "
                     "section is not shown (rerun `icpcv power` to refresh it)")
        return None
    try:
        return PowerResult.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        notes.append(f"power.json lacks what the report needs ({exc!r}); rerun `icpcv power`")
        return None


def models_of(stats: AnalysisResult, predictions: pd.DataFrame) -> list[str]:
    """The models stats.json analysed, in its order, then any others the predictions hold."""
    names = list(stats.models)
    return names + [m for m in dict.fromkeys(predictions["model"]) if m not in names]


@dataclass
class _Shown:
    """A directory the report shows: its analysis (stats.json) and the predictions it analysed."""

    run: RunDir
    stats: AnalysisResult
    predictions: pd.DataFrame

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def subjects(self) -> list[str]:
        return natural_sorted(set(self.predictions["subject"]))

    @property
    def models(self) -> list[str]:
        return models_of(self.stats, self.predictions)



@dataclass
class RunData(_Shown):
    """Everything the report shows of one run directory."""

    record: RunRecord = None
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    quality: pd.DataFrame = None
    scans: pd.DataFrame = None
    cohort: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    audit: dict = field(default_factory=dict)
    fold_records: list[dict] = field(default_factory=list)
    curves: pd.DataFrame | None = None  # fold, model, epoch, train_loss, val_loss, seconds, best
    calibration: pd.DataFrame | None = None
    scan_audit: dict | None = None  # leakage.json of `run --leakage-audit`, when it belongs to this run
    notes: list[str] = field(default_factory=list)  # what the report could not show, and why
    power: PowerResult | None = None  # power.json of `icpcv power`, when it was made for these predictions
    # issue 14: attribution.json and attribution_maps.npz of `run --saliency N`, when they belong to this run
    attribution: dict | None = None
    attribution_maps: dict | None = field(default=None, repr=False)

    @property
    def networks(self) -> list[str]:
        """The models trained with randomness (the networks), from the fold records."""
        seen: dict[str, bool] = {}
        for r in self.fold_records:
            for m, info in (r.get("models") or {}).items():
                seen.setdefault(m, bool(info.get("stochastic", "epochs_run" in info)))
        return [m for m, yes in seen.items() if yes]

    @property
    def subjects(self) -> list[str]:
        """Every subject the report colours: the kept scans' and the predictions' monkeys."""
        return natural_sorted(set(self.scans["subject"]) | set(self.predictions["subject"]))


def load_run(run_dir) -> RunData:
    """Read a complete run directory; a missing or unreadable file raises RunDirError naming it."""
    run = RunDir(run_dir)
    _missing(run, _required(run))
    record = run.read_record()
    config = read_json_file(run.config_json) if run.config_json.exists() else record.config.to_dict()
    env = read_json_file(run.environment_json) if run.environment_json.exists() else {}
    cohort = read_json_file(run.cohort.meta_json) if run.cohort.meta_json.exists() else {}
    scans = read_csv_file(run.cohort.scans_csv, dtype={"scan_id": str, "subject": str, "path": str},
                          keep_default_na=False, na_values={"iop": [""], "icp": [""]})
    plan = run.read_plan_dict()
    notes = []
    folds, curves = [], []
    n_folds = int(record.n_folds or len(plan.get("folds", [])))
    for k in range(n_folds):
        fold = run.fold(k)
        if fold.record_json.exists():
            folds.append(read_json_file(fold.record_json))
        else:
            notes.append(f"fold {k} has no record.json; its timing is not shown")
        curve = fold.read_learning_curve()
        if curve is not None:
            curves.append(curve.assign(fold=k))
    scan_audit = None
    if run.leakage_json.exists():
        try:
            scan_audit = run.scan_split_audit(record)
        except (OSError, ValueError) as exc:
            notes.append(f"leakage.json cannot be read ({exc}); the scan-split audit is not shown")
        else:
            if scan_audit is None:
                notes.append("leakage.json belongs to an earlier version of this run or of its scan_split twin; "
                             "the scan-split audit is not shown (rerun with --leakage-audit to refresh it)")
    power = read_power(run, notes)
    attribution, attribution_maps = read_attribution(run, record, notes)  # issue 14
    return RunData(run=run, record=record, config=config, environment=env, stats=read_stats(run),
                   predictions=primary_predictions(run.read_predictions()), quality=run.read_quality(), scans=scans,
                   cohort=cohort, plan=plan, audit=run.read_plan_audit(), fold_records=folds,
                   curves=pd.concat(curves, ignore_index=True) if curves else None,
                   calibration=read_calibration(run), scan_audit=scan_audit, notes=notes, power=power,
                   attribution=attribution, attribution_maps=attribution_maps)


def read_attribution(run: RunDir, record: RunRecord, notes: list[str]) -> tuple[dict | None, dict | None]:
    """Issue 14: ``attribution.json`` and ``attribution_maps.npz`` (``run --saliency N``) when they were made
    for this run (same run key); otherwise (None, None), with a note saying why they are not shown."""
    if not run.attribution_json.exists():
        return None, None
    try:
        data = read_json_file(run.attribution_json)
    except RunDirError as exc:
        notes.append(f"attribution.json cannot be read ({exc}); the attribution section is not shown")
        return None, None
    if not isinstance(data, dict) or data.get("run_key") != record.key:
        notes.append("attribution.json belongs to another version of this run; the attribution section is not shown")
        return None, None
    maps = None
    if run.attribution_maps_npz.exists():
        try:
            with np.load(run.attribution_maps_npz, allow_pickle=False) as z:
                maps = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            notes.append(f"attribution_maps.npz cannot be read ({exc}); the attribution figures are not shown")
    return data, maps


@dataclass
class _AnalysedTable(_Shown):
    """A directory holding a predictions table and its stats.json, beside a meta record."""

    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    power: PowerResult | None = None  # power.json of `icpcv power`, when it was made for these predictions


class CompareData(_AnalysedTable):
    """A comparison directory written by ``icpcv compare``; ``meta`` is compare.json: runs (name, path,
    plan_hash, data_hash, config, environment), models, reference."""


def load_compare(out_dir) -> CompareData:
    run = RunDir(out_dir)
    _missing(run, _required_compare(run))
    notes: list[str] = []
    power = read_power(run, notes)
    return CompareData(run=run, meta=read_json_file(run.compare_json), stats=read_stats(run),
                       predictions=primary_predictions(run.read_predictions()), notes=notes, power=power)


class PredictionsData(_AnalysedTable):
    """An analysis directory written by ``icpcv analyze PREDICTIONS --out DIR`` outside any run.

    Only the predictions table is known: no cohort, fold plan or leakage audit, so the report
    shows the statistics and the figures drawn from the predictions, and says what it cannot check.
    ``meta`` is analysis.json: kind, source (path, resolved, sha256, n_rows), settings, icpcv
    version, time.
    """


def _source_notes(meta: dict) -> list[str]:
    """Whether the analysed file is still what was analysed: the report is regenerated from the copy
    in the directory, so a source that changed since is worth a line, not an error."""
    source = meta.get("source") or {}
    where, digest = source.get("resolved"), source.get("sha256")
    if not where or not digest or not Path(where).is_file():
        return []
    try:
        now = file_sha256(Path(where))
    except OSError:
        return []
    if now != digest:
        return [f"{where} has changed since it was analysed (sha256 {now[:12]}… now, {digest[:12]}… then); "
                "this report shows the analysed copy, predictions.csv; rerun `icpcv analyze` to analyse the new one"]
    return []


def load_predictions_dir(out_dir) -> PredictionsData:
    """Read an analysis directory; a missing or unreadable file raises RunDirError naming it."""
    run = RunDir(out_dir)
    _missing(run, _required_analysis(run), what="analysis")
    meta = read_json_file(run.analysis_json)
    if not isinstance(meta, dict):
        raise RunDirError(f"{run.analysis_json}: not a JSON object; rerun `icpcv analyze` with the same --out")
    notes = _source_notes(meta)
    power = read_power(run, notes)
    return PredictionsData(run=run, meta=meta, stats=read_stats(run),
                           predictions=primary_predictions(run.read_predictions()),
                           notes=notes, power=power)
