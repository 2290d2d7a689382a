"""Reading predictions and writing ``stats.json``.

Predictions are a long table, one row per (model, scan)::

    fold, subject, scan_id, model, y_true, y_pred [, iop]

Row numbers in error messages are **1-based data rows**: the header is not
counted, so "row 1" is the first line after the header (line 2 of a CSV file,
row 2 in a spreadsheet that shows the header as row 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv.errors import InputError
from icpcv.plausible import ICP_MMHG, IOP_MMHG, PREDICTION_MMHG, describe, in_range, is_missing, show
from icpcv.util import atomic_write_text, clip, parse_decimal, subject_label, to_jsonable

REQUIRED_COLUMNS = ("fold", "subject", "scan_id", "model", "y_true", "y_pred")
OPTIONAL_NUMERIC = ("iop",)
LABEL_COLUMNS = ("fold", "subject", "scan_id", "model")
NUMERIC_COLUMNS = ("y_true", "y_pred")
#: Optional 0-based training repeat of a model trained several times per fold (issue 10;
#: icpcv/stats/repeats.py). Empty for deterministic models.
REPEAT_COLUMN = "repeat"
#: column -> (accepted range, what it is): icpcv.plausible, docs/inputs.md
PLAUSIBLE = {"y_true": (ICP_MMHG, "measured ICP"), "y_pred": (PREDICTION_MMHG, "ICP prediction"),
             "iop": (IOP_MMHG, "IOP")}


def _load_raw(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(f"{path.name}: file not found ({path})")
    try:
        if suffix == ".csv":
            # Everything as text, so that a bad cell can be quoted back verbatim.
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
        if suffix in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError:
                raise InputError(
                    f"{path.name}: reading Parquet needs pyarrow; install it with "
                    "`pip install 'icpcv[parquet]'` or save the table as .csv") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path.name}: the file is empty (no header)") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                         "save the table as UTF-8 CSV") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise InputError(f"{path.name}: cannot be read as {suffix[1:]}: {exc}") from None
    raise InputError(f"{path.name}: unsupported file type {suffix!r} (use .csv or .parquet)")


def _as_number(value):
    """Float value of one cell, or None when it is not a finite number."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, str):
        v = parse_decimal(value)  # plain decimal numbers only: not '2_0', not full-width digits
        return v if v is not None and math.isfinite(v) else None
    return None


def _is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _label(value) -> str:
    """Canonical string form of a label cell (ints stay '7', not '7.0')."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value.strip()
    return str(value)


def _parse_repeats(values, source: str) -> pd.Series:
    """The ``repeat`` column as nullable integers: blank -> <NA>, else a whole number >= 0."""
    parsed = []
    for i, v in enumerate(values):
        if v is pd.NA or _is_blank(v):  # <NA>: a table validated before, read again
            parsed.append(pd.NA)
            continue
        x = _as_number(v)
        if x is None or not x.is_integer() or x < 0:
            raise InputError(f"{source} row {i + 1}, column {REPEAT_COLUMN}: {clip(repr(v))} is not a repeat "
                             f"number (a whole number 0, 1, 2, ...; empty for a deterministic model)")
        parsed.append(int(x))
    return pd.Series(pd.array(parsed, dtype="Int64"))


def _raise_repeat_duplicate(out: pd.DataFrame, same, source: str, allow_repeats: bool) -> None:
    """Issue 10: the error for rows ``same`` sharing (model, scan_id) in a table with ``repeat``."""
    first = same[0]
    rows = ", ".join(str(r + 1) for r in same)
    label = f"model={out['model'].iloc[first]!r}, scan_id={out['scan_id'].iloc[first]!r}"
    reps = out[REPEAT_COLUMN].iloc[same]
    if allow_repeats:
        shown = "empty" if pd.isna(reps.iloc[0]) else str(reps.iloc[0])
        raise InputError(f"{source} rows {rows}, columns model/scan_id/repeat: duplicate ({label}, "
                         f"repeat {shown})")
    if reps.notna().all() and reps.nunique() == len(same):
        # Repeated trainings are legitimate, but a per-scan analysis needs one row per scan.
        raise InputError(
            f"{source} rows {rows}, column {REPEAT_COLUMN}: ({label}) has one row per training "
            f"repeat ({', '.join(str(r) for r in reps)}); combine the repeats with "
            f"icpcv.stats.repeats.ensemble() before this step")


def validate_predictions(df: pd.DataFrame, source: str = "predictions", *,
                         allow_repeats: bool = False) -> pd.DataFrame:
    """Check a predictions frame and return a clean copy.

    Labels (fold, subject, scan_id, model) become ``str``; y_true, y_pred
    (and iop when present) become ``float64``; an optional ``repeat`` column
    becomes nullable ``Int64``. Raises :class:`InputError` on a
    missing column, an empty label, a value that is not a finite number or is
    outside its plausible range (:data:`PLAUSIBLE`: y_true a measured ICP, y_pred
    an ICP prediction, iop an IOP, in mmHg), a duplicate (model, scan_id), or a
    scan whose subject / y_true differs between models. ``source`` is the file
    name used in messages.

    Parameters
    ----------
    df : pandas.DataFrame
        Columns ``fold, subject, scan_id, model, y_true, y_pred`` and
        optionally ``iop`` (which may be blank) and ``repeat``; any other
        columns are kept unvalidated.
    source : str, default "predictions"
        Name of the table in error messages.
    allow_repeats : bool, default False
        Issue 10: make the duplicate key (model, scan_id, repeat) (used by
        :mod:`icpcv.stats.repeats`). By default rows of one (model, scan_id)
        that differ only in ``repeat`` are an error that says to combine them
        with :func:`icpcv.stats.repeats.ensemble` first.

    Returns
    -------
    pandas.DataFrame
        A new frame with a fresh 0..n-1 index.

    Raises
    ------
    InputError
        Naming the source, the 1-based data row and the column.

    Examples
    --------
    >>> import pandas as pd
    >>> from icpcv.stats.io import validate_predictions
    >>> raw = pd.DataFrame({"fold": [0, 0], "subject": [7, 7], "scan_id": ["a", "b"],
    ...                     "model": ["cnn", "cnn"], "y_true": ["12.5", "14"],
    ...                     "y_pred": [13.0, 12.0]})
    >>> clean = validate_predictions(raw)
    >>> clean["subject"].tolist(), clean["y_true"].tolist()
    (['7', '7'], [12.5, 14.0])
    >>> validate_predictions(raw.assign(y_pred=["13", "abc"]), source="predictions.csv")
    Traceback (most recent call last):
        ...
    icpcv.errors.InputError: predictions.csv row 2, column y_pred: 'abc' is not a number
    >>> validate_predictions(raw.assign(y_pred=["13", "6100"]), source="predictions.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    icpcv.errors.InputError: predictions.csv row 2, column y_pred: 6100 is not a plausible ICP prediction ...
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"{source}: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, df.columns)) or 'none'})"
        )
    if len(df) == 0:
        raise InputError(f"{source}: no data rows")

    out = pd.DataFrame(index=range(len(df)))
    for col in LABEL_COLUMNS:
        values = df[col].tolist()
        for i, v in enumerate(values):
            if _is_blank(v):
                raise InputError(f"{source} row {i + 1}, column {col}: empty value")
            if isinstance(v, str) and is_missing(v):  # read back as NaN by every pandas reader downstream
                raise InputError(f"{source} row {i + 1}, column {col}: {v.strip()!r} reads as a missing value; "
                                 "give every row its label")
        # one monkey is one monkey: '1', '1.0' and '01' are subject '1', as in the scan tables
        out[col] = [subject_label(v) if col == "subject" else _label(v) for v in values]

    numeric = list(NUMERIC_COLUMNS) + [c for c in OPTIONAL_NUMERIC if c in df.columns]
    for col in numeric:
        values = df[col].tolist()
        parsed = np.empty(len(values), dtype=float)
        bounds, what = PLAUSIBLE[col]
        for i, v in enumerate(values):
            x = _as_number(v)
            if x is None:
                if col in OPTIONAL_NUMERIC and (_is_blank(v) or (isinstance(v, str) and is_missing(v))):
                    parsed[i] = np.nan  # optional covariate may be missing
                    continue
                shown = "empty" if _is_blank(v) else clip(repr(v))
                raise InputError(f"{source} row {i + 1}, column {col}: {shown} is not a number")
            if not in_range(x, bounds):
                raise InputError(f"{source} row {i + 1}, column {col}: {show(x)} is not a plausible {what} "
                                 f"(accepted: {describe(bounds)}; beyond that it is a unit or export error, not a "
                                 "pressure in mmHg); fix the table, or leave the scan out of every model")
            parsed[i] = x
        out[col] = parsed

    key = out["model"] + "\x00" + out["scan_id"]
    # --- issue 10 (repeats): the `repeat` column joins the duplicate key when allowed ---
    has_repeat = REPEAT_COLUMN in df.columns
    if has_repeat:
        out[REPEAT_COLUMN] = _parse_repeats(df[REPEAT_COLUMN].tolist(), source)
        if allow_repeats:
            key = key + "\x00" + pd.Series(["" if pd.isna(v) else str(v) for v in out[REPEAT_COLUMN]])
    # --- end issue 10 ---
    dup = key.duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())
        first = rows[0]
        same = rows[key.iloc[rows].to_numpy() == key.iloc[first]]
        if has_repeat:  # issue 10: say whether these are repeats to combine or a true duplicate
            _raise_repeat_duplicate(out, same, source, allow_repeats)
        raise InputError(
            f"{source} rows {', '.join(str(r + 1) for r in same)}, columns model/scan_id: "
            f"duplicate (model={out['model'].iloc[first]!r}, scan_id={out['scan_id'].iloc[first]!r})"
        )

    # A scan is one eye image of one monkey at one ICP: its subject and y_true
    # must agree across models, otherwise paired comparisons are meaningless.
    for col in ("subject", "y_true"):
        per_scan = out.groupby("scan_id", sort=False)[col]
        bad = per_scan.transform("nunique") > 1
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            scan = out["scan_id"].iloc[i]
            rows = np.flatnonzero((out["scan_id"] == scan).to_numpy())
            j = next(r for r in rows if out[col].iloc[r] != out[col].iloc[rows[0]])
            here, first = out[col].iloc[j], out[col].iloc[rows[0]]
            raise InputError(
                f"{source} row {j + 1}, column {col}: scan_id {scan!r} has {col} "
                f"{show(here) if col == 'y_true' else clip(repr(here))} here but "
                f"{show(first) if col == 'y_true' else clip(repr(first))} in row {rows[0] + 1}"
            )

    extra = [c for c in df.columns if c not in out.columns]
    for c in extra:  # keep anything else the caller stored (not validated)
        out[c] = df[c].to_numpy()
    return out


def read_predictions(path, *, allow_repeats: bool = False) -> pd.DataFrame:
    """Read and validate a predictions table (CSV or Parquet).

    Parameters
    ----------
    path : str or Path
        ``.csv`` or ``.parquet`` / ``.pq`` file with columns ``fold, subject,
        scan_id, model, y_true, y_pred`` and optionally ``iop`` and ``repeat``.
    allow_repeats : bool
        Accept one row per (model, scan_id, repeat); see :func:`validate_predictions`.

    Returns
    -------
    pandas.DataFrame
        Labels as ``str``, numbers as ``float64``.

    Raises
    ------
    InputError
        With a message naming the file, the 1-based data row (header not
        counted: row 1 is the first line after the header) and the column,
        e.g. ``predictions.csv row 17, column y_pred: 'abc' is not a number``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import pandas as pd
    >>> from icpcv.stats.io import read_predictions
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "predictions.csv"
    >>> pd.DataFrame({"fold": [0, 1], "subject": ["m1", "m2"], "scan_id": ["s1", "s2"],
    ...               "model": ["cnn", "cnn"], "y_true": [12.5, 9.0],
    ...               "y_pred": [13.1, 10.2]}).to_csv(path, index=False)
    >>> table = read_predictions(path)
    >>> table[["subject", "y_true", "y_pred"]].values.tolist()
    [['m1', 12.5, 13.1], ['m2', 9.0, 10.2]]
    >>> bad = Path(tmp.name) / "bad.csv"
    >>> table.assign(y_pred=["13.1", "abc"]).to_csv(bad, index=False)
    >>> read_predictions(bad)
    Traceback (most recent call last):
        ...
    icpcv.errors.InputError: bad.csv row 2, column y_pred: 'abc' is not a number
    >>> tmp.cleanup()
    """
    path = Path(path)
    raw = _load_raw(path)
    return validate_predictions(raw, source=path.name, allow_repeats=allow_repeats)


def write_stats(result, path) -> Path:
    """Atomically write ``stats.json``.

    ``result`` is an :class:`~icpcv.stats.analysis.AnalysisResult` (anything
    with ``to_dict()``) or a plain dict (NaN becomes null). Written
    through :func:`icpcv.util.atomic_write_text` (temporary file, fsync,
    rename), so readers see either the old or the new file, never a partial
    one, with the umask's permissions.

    Parameters
    ----------
    result : AnalysisResult or dict
    path : str or Path

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from icpcv.stats.io import write_stats
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = write_stats({"mae": 1.5, "p": float("nan")}, Path(tmp.name) / "stats.json")
    >>> print(path.read_text(), end="")
    {
      "mae": 1.5,
      "p": null
    }
    >>> tmp.cleanup()
    """
    path = Path(path)
    data = result.to_dict() if hasattr(result, "to_dict") else to_jsonable(result)
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path
