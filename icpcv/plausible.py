"""What icpcv accepts as a plausible value of each input: one home for the ranges (docs/inputs.md).

A value outside its range is not a measurement but a typo, a unit error or a broken export, and
using it would change the result (or overflow the arithmetic). Rows of a scan table outside a
range are dropped with a reason code in ``data_quality.csv``; a predictions table cannot drop a
row (the comparisons are paired), so a value outside its range there is an InputError naming the
file, row and column.
"""
from __future__ import annotations

import math

from icpcv.errors import InputError

#: intraocular pressure, mmHg (gauge). Below 0 is impossible in a living eye; above 100 mmHg the
#: eye is not perfused (IOP above systolic pressure); the study set 5-50 mmHg.
IOP_MMHG = (0.0, 100.0)
#: intracranial pressure, mmHg (gauge). Upright or drained, ICP can be some mmHg below zero, never
#: -20; above 100 mmHg the brain is not perfused. The study set 0-46 mmHg. The seed's own
#: eligibility rule (ICP > 0) applies on top, to its format only.
ICP_MMHG = (-20.0, 100.0)
#: a model's ICP prediction, mmHg: ten times the ICP range. A diverged model may predict 150 mmHg
#: and must be shown as bad; 6,000 is ICP in pascals, 1e300 an export bug, neither a prediction.
PREDICTION_MMHG = (-1000.0, 1000.0)

#: voxel magnitude beyond any OCT export (uint32 tops at 4.3e9); standardising squares the values,
#: and above ~1e15 float32 sums of squares over a volume no longer fit (float32 max 3.4e38).
VOXEL_ABS_MAX = 1e15
#: a voxel further than this many of the cohort's typical voxel standard deviations from its
#: typical mean: after standardisation it would dominate every feature (another intensity
#: scale, or a corrupt value). Real OCT speckle stays within tens.
VOXEL_Z_MAX = 1000.0
#: along any axis, a volume's raw size may be up to this factor off the cohort's typical size
#: (the per-axis median): 400 vs 512 lateral or 1024 vs 2048 depth samples is resampling's job,
#: a quarter of the depth or a single voxel is another scan (or a wrong file).
SHAPE_FACTOR_MAX = 2.0
#: axes "look swapped" when reordering them fits the cohort's typical shape (or the proportions of
#: --shape) at least this factor better than the order stored and within SHAPE_FACTOR_MAX.
SWAP_GAIN = math.sqrt(2.0)
#: fewer voxels than this along an axis is not a volume (a B-scan or an A-scan saved as 3-D).
MIN_AXIS_VOXELS = 2


#: cells that mean "missing" to pandas (whose defaults read icpcv's own files back), R and spreadsheets:
#: as a scan id, subject, fold or model they would become NaN downstream, and as a pressure they are
#: no reading. Treated as empty everywhere a table is read.
MISSING_TOKENS = frozenset({"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                            "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def is_missing(text: str) -> bool:
    """An empty cell, or one of MISSING_TOKENS (after trimming)."""
    text = text.strip()
    return not text or text in MISSING_TOKENS


def in_range(x: float, bounds: tuple[float, float]) -> bool:
    """``lo <= x <= hi`` (bounds included); NaN and infinities are outside."""
    return bool(math.isfinite(x) and bounds[0] <= x <= bounds[1])


def describe(bounds: tuple[float, float], unit: str = "mmHg") -> str:
    """``'0 to 100 mmHg'``: the accepted range as the messages and the docs write it."""
    return f"{bounds[0]:g} to {bounds[1]:g} {unit}"


def show(x) -> str:
    """A number as a user wrote it in a message: ``8.09``, ``1e+300``, never ``np.float64(8.09)``."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return repr(x)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return f"{f:g}" if abs(f) >= 1e15 or (f != 0 and abs(f) < 1e-4) else repr(f)


#: numeric options of ``icpcv run`` checked before any work: option -> (lowest, highest, open bounds?, why)
OPTION_RANGES = {
    "--n-boot": (1, math.inf, False, "bootstrap resamples"),
    "--ci-level": (0.0, 1.0, True, "a confidence level, e.g. 0.95"),
    "--epochs": (0, math.inf, False, "0 keeps the untrained network (it predicts the training mean)"),
    "--batch-size": (1, math.inf, False, "scans per training step"),
    "--lr": (0.0, math.inf, True, "a learning rate, e.g. 3e-3"),
    "--patience": (0, math.inf, False, "epochs without improvement before early stopping"),
    "--repeats": (1, 1000, False, "trainings of each network per fold; 1 trains once"),
}


def check_options(values: dict) -> None:
    """Refuse a numeric option outside :data:`OPTION_RANGES` (``{"--n-boot": 0, ...}``; None = not
    given) with an InputError naming it: before any fold, not as a ValueError after the last one."""
    for option, value in values.items():
        if value is None:
            continue
        lo, hi, open_, why = OPTION_RANGES[option]
        if math.isfinite(value) and (lo < value < hi if open_ else lo <= value <= hi):
            continue
        if open_ and math.isfinite(hi):
            need = f"between {lo:g} and {hi:g} (exclusive)"
        else:
            need = f"above {lo:g}" if open_ else f"at least {lo:g}"
        raise InputError(f"{option} {value:g}: need a value {need} ({why})")
