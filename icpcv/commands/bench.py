"""``icpcv bench [train|run|stats|prepare|repeats|variance|tune|memory|gpu-check|coverage|report]``: benchmarks that print figures and ratios.

Each benchmark measures its yardstick in the same run; none of them is a test.

* ``train`` (the default): training throughput, step only vs the real data path vs a seed-style
  loop (:mod:`icpcv.bench.train`).
* ``run``: wall time of the default ``python -m icpcv run --folds 14`` on this machine, against
  the 5-minute budget of the walking skeleton (:mod:`icpcv.bench.run`).
* ``stats``: the monkey-level bootstrap against a naive loop (:mod:`icpcv.stats.bench`).
* ``prepare``: raw-volume conversion against load-everything-then-resample (:mod:`icpcv.prepare.bench`).
* ``repeats``: the cost of ``--repeats R`` against training once, from a run with repeats (its
  repeat-0 units are the run ``--repeats 1`` makes), with the row of the README's table
  (:mod:`icpcv.bench.repeats`).
* ``tune``: the cost of ``run --tune`` against the plain run, within one run, and its known answer on the
  phantom (:mod:`icpcv.bench.tune`).
* ``memory``: the GPU memory plan of a preset on a card, counted on the meta device
  (:mod:`icpcv.models.memory`): training, validation and prediction peaks, volumes, resident or streamed.
* ``coverage``: the coverage of ``icpcv predict``'s monkey-level interval over many new phantom monkeys,
  beside the naive scan-level conformal interval (:mod:`icpcv.predict.coverage`, issue 20).
* ``report``: drawing a run's report figures with ``to_png`` against savefig's own tight box
  (:mod:`icpcv.report.bench`).
* ``gpu-check``: the one prepared check for a GPU machine, every figure in one JSON
  (:mod:`icpcv.bench.gpu_check`).
"""
from __future__ import annotations

import importlib
import sys

#: benchmark name -> the module whose ``main(argv)`` runs it (imported when asked: start-up time)
TARGETS = {"train": "icpcv.bench.train", "run": "icpcv.bench.run", "stats": "icpcv.stats.bench",
           "prepare": "icpcv.prepare.bench", "memory": "icpcv.models.memory", "gpu-check": "icpcv.bench.gpu_check",
           "repeats": "icpcv.bench.repeats", "variance": "icpcv.stats.repeats_bench",
           "coverage": "icpcv.predict.coverage", "tune": "icpcv.bench.tune",  # tune: issue 21
           "report": "icpcv.report.bench"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    which = argv.pop(0) if argv and argv[0] in TARGETS else "train"
    return int(importlib.import_module(TARGETS[which]).main(argv) or 0)


def add_parser(sub) -> None:
    # listed in the help; the arguments go to the chosen benchmark untouched (see icpcv.commands.main)
    sub.add_parser("bench", help=f"benchmarks: {', '.join(TARGETS)} (train is the default)", add_help=False)
