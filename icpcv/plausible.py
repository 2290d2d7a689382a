"""What icpcv accepts as a plausible value of each input: one home for the ranges (docs/inputs.md).

A value outside its range is not a measurement but a typo, a unit error or a broken export, and
using it would change the result (or overflow the arithmetic). Rows of a scan table outside a
range are dropped with a reason code in ``data_quality.csv``; a predictions table cannot drop a
row (the comparisons are paired), so a value outside its range there is an InputError naming the
file, row and column.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

from icpcv.errors import InputError
from icpcv.util import parse_decimal

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


#: the largest seed: numpy accepts any non-negative integer, torch.manual_seed 64 bits, and the folds'
#: and repeats' seeds are derived from it (``seed * 1000 + fold``): 32 bits leave room for them
SEED_MAX = 2 ** 32 - 1
#: the largest volume a shape option may ask for: 2**27 voxels (512 MiB as float32, 16 times the
#: seed's 128 x 128 x 512); one axis at most 4096 voxels
SHAPE_VOXELS_MAX = 2 ** 27
SHAPE_AXIS_MAX = 4096
#: a study of this many monkeys is beyond any primate study (the planner's --monkeys)
MONKEYS_MAX = 1000
#: ``--device``: what torch.device accepts that icpcv can use
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


@dataclass(frozen=True)
class Range:
    """An accepted interval of a numeric option: ``lo`` to ``hi`` (each included unless open),
    ``why``: what the option is (shown with a refusal). NaN and infinities are always outside."""
    lo: float
    hi: float
    why: str
    lo_open: bool = False
    hi_open: bool = False
    #: checked by a rule of its own that states the same range (and more): check_parsed leaves it to it
    own_check: str | None = None

    def accepts(self, x) -> bool:
        try:
            x = float(x)
        except (TypeError, ValueError, OverflowError):
            return False
        if not math.isfinite(x):
            return False
        return (self.lo < x if self.lo_open else self.lo <= x) and (x < self.hi if self.hi_open else x <= self.hi)

    def text(self) -> str:
        """``'1 to 1000'``, ``'above 0 to 10'``, ``'above 0 and below 1'``: both ends, always."""
        lo, hi = show(self.lo), show(self.hi)
        if self.lo_open and self.hi_open:
            return f"above {lo} and below {hi}"
        if self.lo_open:
            return f"above {lo} up to {hi}"
        if self.hi_open:
            return f"{lo} up to (not including) {hi}"
        return f"{lo} to {hi}"


_SEED = Range(0, SEED_MAX, "a seed: a whole number")
_WORKERS = Range(1, 1024, "processes side by side")
_N_BOOT = Range(1, 1_000_000, "bootstrap resamples")
_CI_LEVEL = Range(0.0, 1.0, "a confidence level, e.g. 0.95", lo_open=True, hi_open=True)

#: every numeric option of every subcommand -> its accepted range (docs/inputs.md, "Options"),
#: checked by :func:`check_parsed` before a command writes anything; ``(command, option)`` keys
#: override the option's range for one command
OPTION_RANGES: dict = {
    "--n-boot": _N_BOOT,
    "--ci-level": _CI_LEVEL,
    "--seed": _SEED,
    "--data-seed": _SEED,
    "--signal": Range(0.0, 10.0, "how much the phantom's scan carries about ICP: 0 is the negative control, 1 the "
                                 "default; a negative signal would reverse the phantom's physics, and beyond 10 the "
                                 "lamina leaves the volume"),
    "--folds": Range(2, 10_000, "folds; at most the number of subjects"),
    "--val-fraction": Range(0.0, 1.0, "the share of training subjects set aside for early stopping", hi_open=True),
    "--repeats": Range(1, 1000, "trainings of each network per fold; 1 trains once"),
    "--epochs": Range(0, 100_000, "0 keeps the untrained network (it predicts the training mean)"),
    "--batch-size": Range(1, 65_536, "scans per training step"),
    "--lr": Range(0.0, 10.0, "a learning rate, e.g. 3e-3", lo_open=True),
    "--weight-decay": Range(0.0, 10.0, "the optimiser's weight decay; 0 = none"),
    "--patience": Range(0, 100_000, "epochs without improvement before early stopping"),
    "--saliency": Range(0, 10_000, "held-out scans to map per monkey; 0 = off"),
    "--workers": _WORKERS,
    "--threads": Range(1, 4096, "torch CPU threads per fold"),
    "--time": Range(1, 525_600, "minutes per fold task (at most a year)"),
    "--gpus": Range(0, 64, "GPUs per fold task"),
    "--cpus": Range(1, 4096, "CPUs per fold task"),
    "--mem": Range(1, 1_048_576, "GB of memory per fold task"),
    "--max-parallel": Range(1, 1_000_000, "array tasks running at once"),
    "--deadline": Range(0.0, 5_256_000, "minutes to wait for the tasks (at most ten years)", lo_open=True),
    "--alpha": Range(0.0, 1.0, "a significance threshold, e.g. 0.05", lo_open=True, hi_open=True),
    "--n-comparisons": Range(1, 10_000, "comparisons the p is adjusted for"),
    "--n-sim": Range(1, 10_000_000, "simulated cohorts per scenario"),
    ("power", "--n-sim"): Range(100, 10_000_000, "simulated studies per size"),
    "--n-subjects": Range(3, 10_000, "monkeys per simulated cohort"),
    "--effect": Range(-1000.0, 1000.0, "an MAE reduction in mmHg (positive: the model better)"),
    "--saturation": Range(-VOXEL_ABS_MAX, VOXEL_ABS_MAX, "a voxel value counted as saturated"),
    # issue 19's geometry options: icpcv.cohort.geometry.check_options states these ranges (FOV_RANGE_MM,
    # DEPTH_RANGE_MM) with the line-scan rule, before any volume is read
    "--fov-mm": Range(0.1, 40.0, "each side of the field of view, mm", own_check="icpcv.cohort.geometry.check_options"),
    "--depth-mm": Range(0.1, 20.0, "the depth, mm", own_check="icpcv.cohort.geometry.check_options"),
    # icpcv bench (each benchmark's own parser)
    "--steps": Range(1, 100_000, "timed steps per phase"),
    "--warmup": Range(0, 100_000, "untimed steps first"),
    "--seed-batch-size": Range(1, 65_536, "batch of the seed-style loop"),
    ("bench", "--workers"): Range(0, 1024, "DataLoader workers (0: in the main process)"),
    "--base-width": Range(1, 4096, "the ResNets' first width"),
    "--budget": Range(0.0, 1e7, "seconds allowed", lo_open=True),
    "--naive-boot": Range(1, 1_000_000, "resamples of the naive loop"),
    "--n-scans": Range(1, 10_000_000, "scans"),
    "--repeat": Range(1, 1000, "best of N timings"),
    "--volumes": Range(1, 10_000, "raw volumes to generate"),
    "--raw-shape": Range(2, SHAPE_AXIS_MAX * 4, "voxels along an axis of the raw volume"),
    "--target": Range(1, SHAPE_AXIS_MAX, "voxels along an axis of the target"),
    "--gpu-mem": Range(0.0, 100_000.0, "GiB of GPU memory", lo_open=True),
    "--eval-cap": Range(1, 65_536, "the largest prediction batch proposed"),
    "--cohorts": Range(1, 10_000_000, "simulated cohorts per scenario"),
    "--rounds": Range(1, 1000, "rounds, each drawing every figure both ways"),
    # issue 21: run --tune's inner folds
    "--inner-folds": Range(2, 10_000, "inner folds of each outer fold's training monkeys (at most their number)"),
    # issue 20: icpcv predict
    "--level": Range(0.0, 1.0, "the intervals' coverage level, e.g. 0.9", lo_open=True, hi_open=True),
    "--new-subjects": Range(1, 1000, "new phantom monkeys to draw"),
    "--new-seed": _SEED,
}


def option_range(option: str, command: str | None = None) -> Range | None:
    """The accepted range of ``option`` (for ``command``), or None when it has none."""
    return OPTION_RANGES.get((command, option)) or OPTION_RANGES.get(option)


def check_option(option: str, value, command: str | None = None) -> None:
    """Refuse ``value`` outside ``option``'s range: ``"--repeats 1001: accepted 1 to 1000 (...)"``."""
    r = option_range(option, command)
    if r is not None and not r.accepts(value):
        raise InputError(f"{option} {show(value)}: accepted {r.text()} ({r.why})")


def check_options(values: dict, command: str | None = None) -> None:
    """Refuse a numeric option outside its range (``{"--n-boot": 0, ...}``; None = not given) with an
    InputError naming it: before any work, not as a ValueError after the last fold. Lists (an option
    taking several numbers) are checked number by number."""
    for option, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            check_option(option, v, command)


def check_shape(shape, option: str = "--shape") -> None:
    """A volume shape option: each axis at most SHAPE_AXIS_MAX, the volume at most SHAPE_VOXELS_MAX."""
    shape = tuple(int(s) for s in shape)
    big = max(shape)
    if big > SHAPE_AXIS_MAX:
        raise InputError(f"{option} {'x'.join(map(str, shape))}: an axis of {big} voxels; accepted up to "
                         f"{SHAPE_AXIS_MAX} per axis")
    n = math.prod(shape)
    if n > SHAPE_VOXELS_MAX:
        raise InputError(f"{option} {'x'.join(map(str, shape))}: {n:,} voxels per volume ({n * 4 / 2 ** 30:.1f} GiB "
                         f"as float32); accepted up to {SHAPE_VOXELS_MAX:,} ({SHAPE_VOXELS_MAX * 4 / 2 ** 30:g} GiB), "
                         "16 times the seed study's 128x128x512")


#: the analysis's parameters and the options that set them: a message from the engine reaches the
#: user in the options' words (``--n-boot``, not ``n_boot``)
PARAMETER_OPTIONS = {"n_boot": "--n-boot", "ci_level": "--ci-level", "ci_method": "--ci-method", "n_sim": "--n-sim",
                     "n_perm": "--n-perm", "n_comparisons": "--n-comparisons"}


def in_option_words(text: str) -> str:
    """An engine's message with its parameter names replaced by the options that set them.

    >>> in_option_words("n_boot must be at least 1, got 0; unknown ci_method 'x'")
    "--n-boot must be at least 1, got 0; unknown --ci-method 'x'"
    """
    return re.sub(r"\b(" + "|".join(PARAMETER_OPTIONS) + r")\b", lambda m: PARAMETER_OPTIONS[m.group(1)], str(text))


def check_device(device: str, option: str = "--device") -> None:
    """``--device``: auto, cpu, mps, cuda or cuda:N (the GPU's presence is checked where torch is loaded)."""
    if device is not None and not re.match(DEVICE_PATTERN, str(device)):
        raise InputError(f"{option} {device!r}: accepted auto (CUDA when available), cpu, cuda, cuda:N (e.g. cuda:1) "
                         "or mps")


def check_parsed(parser, args, command: str | None = None) -> None:
    """Every numeric option an argparse ``parser`` parsed into ``args`` (ints and floats, one or a
    list) against :data:`OPTION_RANGES`; shapes against :func:`check_shape`; ``--device``. The one
    place the command line's numbers are checked, before a command writes anything."""
    for action in parser._actions:  # noqa: SLF001 - argparse's documented way to list what a parser takes
        names = [o for o in action.option_strings if o.startswith("--")]
        if not names or not hasattr(args, action.dest):
            continue
        option, value = names[0], getattr(args, action.dest)
        if value is None or isinstance(value, bool):
            continue
        if option == "--device":
            check_device(value)
        elif option == "--shape" and isinstance(value, tuple):
            check_shape(value)
        elif option_range(option, command) is not None and option_range(option, command).own_check is None:
            values = value if isinstance(value, (list, tuple)) else [value]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                check_options({option: values}, command)


def _plain(kind):
    """``int`` or ``float`` for an option, read as tables read numbers (:func:`icpcv.util.parse_decimal`: ASCII
    digits, a sign, a decimal point, an exponent; ``nan`` also passes on, to the option's range, which names
    it). Python's own ``int``/``float`` also read ``1_0`` as 10 and full-width digits as digits."""
    def parse(text: str):
        if parse_decimal(text) is None and str(text).strip().lstrip("+-").lower() != "nan":
            raise ValueError(text)
        return kind(text)

    parse.__name__ = kind.__name__  # argparse's message: "invalid int value: '1_0'"
    parse.kind = kind
    return parse


def plain_numbers(parser) -> None:
    """Every ``type=int``/``type=float`` option of ``parser`` and its subcommands reads plain numbers only."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if action.type in (int, float):
            action.type = _plain(action.type)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                plain_numbers(sub)
