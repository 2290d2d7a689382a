"""Reading a run directory (or a comparison or analysis directory) for the report, as it is on disk.

Nothing here computes a statistic: the numbers come from ``stats.json``; the tables read here
(predictions, data quality, learning curves, fold records) are only drawn or listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from icpcv.errors import RunDirError
from icpcv.util import file_sha256, natural_sorted, read_json

#: files a finished run must have, with what to do when one is missing
REQUIRED = {
    "run.json": "not a run directory; point at a folder written by `icpcv run` (or by `icpcv compare` or "
                "`icpcv analyze`)",
    "fold_plan.json": "the run stopped before its fold plan was written; rerun `icpcv run` with the same --out",
    "leakage_audit.json": "the run stopped before its leakage audit was written; rerun `icpcv run` with the same --out",
    "data_quality.csv": "the run stopped before its cohort was written; rerun `icpcv run` with the same --out",
    "cohort/scans.csv": "the run stopped before its cohort was written; rerun `icpcv run` with the same --out",
    "predictions.csv": "the folds are not all gathered; rerun `icpcv run` with the same --out to finish them",
    "stats.json": "the run was not analysed; rerun `icpcv run` with the same --out (or `icpcv analyze`)",
}
#: files a comparison directory (written by `icpcv compare`) must have
REQUIRED_COMPARE = {
    "compare.json": "not a comparison directory",
    "predictions.csv": "the comparison is incomplete; rerun `icpcv compare`",
    "stats.json": "the comparison is incomplete; rerun `icpcv compare`",
}
#: files an analysis directory (written by `icpcv analyze PREDICTIONS --out DIR`) must have
REQUIRED_PREDICTIONS = {
    "analysis.json": "not an analysis directory",
    "predictions.csv": "the analysis is incomplete; rerun `icpcv analyze` with the same --out",
    "stats.json": "the analysis is incomplete; rerun `icpcv analyze` with the same --out",
}
CALIBRATION_FILES = ("calibration.json", "calibration.csv")


def _missing(run_dir: Path, required: dict, what: str = "run") -> None:
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such {what} directory")
    gone = [name for name in required if not (run_dir / name).exists()]
    first = next(iter(required))
    if first in gone:
        raise RunDirError(f"{run_dir}: {required[first]} (no {first})")
    if gone:
        raise RunDirError(f"{run_dir}: not a complete {what}: {', '.join(gone)} missing ({required[gone[0]]})")


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


def read_predictions(path: Path) -> pd.DataFrame:
    preds = read_csv_file(path, dtype={"subject": str, "scan_id": str, "model": str})
    need = {"subject", "scan_id", "model", "y_true", "y_pred"}
    if not need <= set(preds.columns):
        raise RunDirError(f"{path}: lacks the column(s) {', '.join(sorted(need - set(preds.columns)))}")
    return preds


def read_calibration(run_dir: Path) -> pd.DataFrame | None:
    """A calibration table when the run has one: ``calibration.json`` (a list of rows, or a dict
    holding one under ``rows``/``table``) or ``calibration.csv``; None when absent."""
    for name in CALIBRATION_FILES:
        p = run_dir / name
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


@dataclass
class RunData:
    """Everything the report shows of one run directory."""

    path: Path
    record: dict
    config: dict
    environment: dict
    stats: dict
    predictions: pd.DataFrame
    quality: pd.DataFrame
    scans: pd.DataFrame
    cohort: dict
    plan: dict
    audit: dict
    fold_records: list[dict] = field(default_factory=list)
    curves: pd.DataFrame | None = None  # fold, model, epoch, train_loss, val_loss, seconds, best
    calibration: pd.DataFrame | None = None
    scan_audit: dict | None = None  # leakage.json of `run --split scans`, when it belongs to this run
    notes: list[str] = field(default_factory=list)  # what the report could not show, and why

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def subjects(self) -> list[str]:
        """Every subject the report colours: the kept scans' and the predictions' monkeys."""
        return natural_sorted(set(self.scans["subject"]) | set(self.predictions["subject"]))

    @property
    def models(self) -> list[str]:
        return models_of(self.stats, self.predictions)


def models_of(stats: dict, predictions: pd.DataFrame) -> list[str]:
    """The models stats.json analysed, in its order, then any others the predictions hold."""
    names = list(stats.get("models", {}))
    return names + [m for m in dict.fromkeys(predictions["model"]) if m not in names]


def load_run(run_dir) -> RunData:
    """Read a complete run directory; a missing or unreadable file raises RunDirError naming it."""
    run_dir = Path(run_dir)
    _missing(run_dir, REQUIRED)
    record = read_json_file(run_dir / "run.json")
    config = read_json_file(run_dir / "config.json") if (run_dir / "config.json").exists() else record.get("config", {})
    env = read_json_file(run_dir / "environment.json") if (run_dir / "environment.json").exists() else {}
    cohort = read_json_file(run_dir / "cohort" / "cohort.json") if (run_dir / "cohort" / "cohort.json").exists() else {}
    quality = read_csv_file(run_dir / "data_quality.csv", dtype=str, keep_default_na=False)
    scans = read_csv_file(run_dir / "cohort" / "scans.csv", dtype={"scan_id": str, "subject": str, "path": str},
                          keep_default_na=False, na_values={"iop": [""], "icp": [""]})
    notes = []
    folds, curves = [], []
    n_folds = int(record.get("n_folds") or len(read_json_file(run_dir / "fold_plan.json").get("folds", [])))
    for k in range(n_folds):
        fdir = run_dir / "folds" / f"fold_{k:02d}"
        if (fdir / "record.json").exists():
            folds.append(read_json_file(fdir / "record.json"))
        else:
            notes.append(f"fold {k} has no record.json; its timing is not shown")
        if (fdir / "learning_curve.csv").exists():
            curves.append(read_csv_file(fdir / "learning_curve.csv", dtype={"model": str}).assign(fold=k))
    scan_audit = None
    if (run_dir / "leakage.json").exists():
        from icpcv.run.leakage import read_scan_split_audit

        try:
            scan_audit = read_scan_split_audit(run_dir, record)
        except (OSError, ValueError) as exc:
            notes.append(f"leakage.json cannot be read ({exc}); the scan-split audit is not shown")
        else:
            if scan_audit is None:
                notes.append("leakage.json belongs to an earlier version of this run or of its scan_split twin; "
                             "the scan-split audit is not shown (rerun with --split scans to refresh it)")
    return RunData(path=run_dir, record=record, config=config, environment=env,
                   stats=read_json_file(run_dir / "stats.json"),
                   predictions=read_predictions(run_dir / "predictions.csv"), quality=quality, scans=scans,
                   cohort=cohort, plan=read_json_file(run_dir / "fold_plan.json"),
                   audit=read_json_file(run_dir / "leakage_audit.json"), fold_records=folds,
                   curves=pd.concat(curves, ignore_index=True) if curves else None,
                   calibration=read_calibration(run_dir), scan_audit=scan_audit, notes=notes)


@dataclass
class _AnalysedTable:
    """A directory holding a predictions table and its stats.json, beside a meta record."""

    path: Path
    meta: dict
    stats: dict
    predictions: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def subjects(self) -> list[str]:
        return natural_sorted(set(self.predictions["subject"]))

    @property
    def models(self) -> list[str]:
        return models_of(self.stats, self.predictions)


class CompareData(_AnalysedTable):
    """A comparison directory written by ``icpcv compare``; ``meta`` is compare.json: runs (name, path,
    plan_hash, data_hash, config, environment), models, reference."""


def load_compare(out_dir) -> CompareData:
    out_dir = Path(out_dir)
    _missing(out_dir, REQUIRED_COMPARE)
    return CompareData(path=out_dir, meta=read_json_file(out_dir / "compare.json"),
                       stats=read_json_file(out_dir / "stats.json"),
                       predictions=read_predictions(out_dir / "predictions.csv"))


def is_compare_dir(path) -> bool:
    return (Path(path) / "compare.json").exists()


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
    out_dir = Path(out_dir)
    _missing(out_dir, REQUIRED_PREDICTIONS, what="analysis")
    meta = read_json_file(out_dir / "analysis.json")
    if not isinstance(meta, dict):
        raise RunDirError(f"{out_dir / 'analysis.json'}: not a JSON object; rerun `icpcv analyze` with the same "
                          "--out")
    return PredictionsData(path=out_dir, meta=meta, stats=read_json_file(out_dir / "stats.json"),
                           predictions=read_predictions(out_dir / "predictions.csv"), notes=_source_notes(meta))


def is_predictions_dir(path) -> bool:
    """An analysis directory: ``analysis.json`` and no ``run.json`` (analysing into a run directory
    keeps it a run, whose report shows the cohort, fold plan and audit too)."""
    path = Path(path)
    return (path / "analysis.json").exists() and not (path / "run.json").exists()
