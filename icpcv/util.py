"""Small shared helpers: atomic writes, JSON, hashing, the one subject order, number formats, the shape option."""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import unicodedata
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from icpcv.errors import DiskFullError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fh)`` on a temporary file in the same folder, fsync, rename: a reader never sees
    half a file. The file gets the umask's permissions (mkstemp's are 0600; a report, stats.json or
    a prepared volume must be readable by coauthors); a full disk becomes a DiskFullError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise_if_disk_full(exc, path)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def raise_if_disk_full(exc: OSError, path) -> None:
    """Turn ENOSPC/EDQUOT into a DiskFullError naming the file and what to do."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    raise DiskFullError(f"{path}: {what} while writing it ({free}); the file was not replaced and nothing "
                        "half-written was left; free some space and rerun the same command to resume") from exc


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Plain Python types for JSON: numpy scalars and arrays become numbers and lists, NaN and
    infinities become None, paths become strings, result objects their ``to_dict()``.

    Anything else raises TypeError: a value that JSON cannot hold is a bug, not something to
    write as its repr.

    >>> to_jsonable({"a": [1.5, float("nan")], "b": np.array([[1, 2]]), "c": (np.float32(0.5), None, -np.inf)})
    {'a': [1.5, None], 'b': [[1, 2]], 'c': [0.5, None, None]}
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if all(type(v) is float for v in obj):  # a row of numbers (a kept model's arrays): no call per value
            return [v if math.isfinite(v) else None for v in obj]
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if np.isfinite(x) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj))


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), for a benchmark's printout."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform  # lazy: only where /proc/cpuinfo is missing

    return platform.processor() or platform.machine()


def package_version(dist: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def canonical_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of obj (sorted keys), shortened."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def natural_key(label: str):
    """Sort '2' before '10'; mixed labels sort numbers first."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(label)) if t]


#: the most characters of a user's cell that a message, data_quality.csv or the report repeats
SHOWN_CHARS = 200


def clip(text, limit: int = SHOWN_CHARS) -> str:
    """A user's cell as shown in a message or a table of problems: up to ``limit`` characters, then
    how long it was (a 20 MB cell is named, not copied).

    >>> clip("x" * 500, 10)
    'xxxxxxxxxx… (500 characters)'
    """
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


#: a number as a lab writes it: ASCII digits, one optional sign, decimal point and exponent; infinities
#: are numbers (outside every range). Not Python's float(): it also reads '2_0' (20) and full-width or
#: Arabic-Indic digits, which no spreadsheet writes as a number.
_DECIMAL = re.compile(r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity)$", re.ASCII | re.IGNORECASE)


def parse_decimal(text: str) -> float | None:
    """A table cell as a plain decimal number (surrounding spaces trimmed), or None when it is not one
    (text, NaN, ``2_0``, ``１２``, ``1,5``, ``0x10``).

    >>> [parse_decimal(t) for t in ("12.5", " -3 ", "1e3", ".5", "5.", "inf", "2_0", "\uff12\uff10", "nan", "0x10")]
    [12.5, -3.0, 1000.0, 0.5, 5.0, inf, None, None, None, None]
    """
    text = str(text).strip()
    if not _DECIMAL.match(text):
        return None
    return float(text)


def has_control_character(text) -> bool:
    """Whether a cell holds a control character (Unicode category Cc: a NUL byte, a line break or tab inside
    the cell, ESC, DEL). No lab writes one into a scan id, a monkey label or a file name, and a NUL would
    not even survive: numpy's text arrays drop trailing NULs (``'1\\x00'`` becomes monkey ``'1'``) and the
    operating system refuses a path holding one.

    >>> [has_control_character(t) for t in ("m1", "a\\x00", "a\\nb", "m\u00fcnchen", "\U0001F435")]
    [False, True, True, False, False]
    """
    return any(unicodedata.category(c) == "Cc" for c in str(text))


def visible_controls(text):
    """A cell as a record of the input shows it (``data_quality.csv``, ``quality.csv``): each control
    character written as its escape, a NUL byte as ``\\x00``, a line break as ``\\n``; other text, and
    anything that is not text, as given. A raw NUL in a CSV stops many readers (R warns of "embedded
    nulls" and cuts the cell); the row number says which input row it was.

    >>> [visible_controls(t) for t in ("c\\x00", "a\\nb", "m\u00fcnchen", 5)]
    ['c\\\\x00', 'a\\\\nb', 'münchen', 5]
    """
    if not isinstance(text, str) or not has_control_character(text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
                   for c in text)


def visible_table(df):
    """:func:`visible_controls` on every text cell of a record table (a copy; numbers untouched)."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype.kind == "O":  # object and pandas' string dtypes
            out[col] = out[col].map(visible_controls)
    return out


_WHOLE_LABEL = re.compile(r"^[+-]?[0-9]+(\.0*)?$", re.ASCII)


def subject_label(value) -> str:
    """The one spelling of a subject (monkey) label, for every reader (scan tables, predictions):
    a whole number written ``1``, ``1.0``, ``01`` or ``+1`` (ASCII digits; what a spreadsheet or pandas
    makes of a number) is ``'1'``; anything else is the text, trimmed.

    >>> [subject_label(v) for v in ("1", "1.0", "01", " +1 ", 1, 1.0, "m1", "1.5", "1e3")]
    ['1', '1', '1', '1', '1', '1', 'm1', '1.5', '1e3']
    """
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value).strip()
    if _WHOLE_LABEL.match(text):
        return str(int(text.split(".")[0]))  # an int, not a float: 40 digits stay 40 digits
    return text


def natural_sorted(labels: Iterable[str]) -> list[str]:
    return sorted((str(x) for x in labels), key=natural_key)


def parse_shape(tokens, *, min_size: int = 1, example: str = "128x128x512") -> tuple[int, int, int]:
    """A volume shape option -> (X, Y, Z=depth).

    Accepts ``"20x20x48"``, ``"20,20,48"``, ``"20×20×48"`` or the tokens ``["20", "20", "48"]``.
    Raises ``argparse.ArgumentTypeError`` (argparse turns it into a usage error naming the option).
    """
    tokens = [tokens] if isinstance(tokens, str) else list(tokens)
    given = " ".join(map(str, tokens))
    parts = [p for t in tokens for p in str(t).lower().replace(",", "x").replace("\u00d7", "x").split("x") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {given!r} is not like {example}") from None
    if len(shape) != 3 or min(shape) < min_size:
        need = "three positive sizes X Y Z(depth)" if min_size <= 1 else \
            f"three sizes X x Y x Z(depth), each >= {min_size}"
        raise argparse.ArgumentTypeError(f"shape {given!r}: need {need}")
    return shape


# ---- numbers as text: the one home of the formats the verdict, the audit and the report print


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) \
        and math.isfinite(x)


def fmt_num(x, digits: int = 2, missing: str = "\u2013") -> str:
    """``x`` with ``digits`` decimals ("0.00", never "-0.00"); ``missing`` for None, NaN and infinities."""
    if is_finite_number(x):
        text = f"{x:.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.") else text
    return missing if x is None or isinstance(x, (float, np.floating)) else str(x)


def fmt_p(p, missing: str = "\u2013", equals: bool = False) -> str:
    """A p-value: "< 0.001", else three decimals (``equals``: "= 0.012", for use after "p")."""
    if not is_finite_number(p):
        return missing
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if equals else f"{p:.3f}"
