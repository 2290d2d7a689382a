"""`python -m icpcv bench [train|run|stats|prepare]`: benchmarks that print figures and ratios.

Each benchmark measures its yardstick in the same run; none of them is a test.

* ``train`` (the default): GPU training throughput, step only vs the real data path vs a
  seed-style loop (``icpcv.train.bench``).
* ``run``: wall time of the default ``python -m icpcv run --folds 14`` on this machine, against
  the 5-minute budget of the walking skeleton.
* ``stats``: the monkey-level bootstrap against a naive loop (``icpcv.stats.bench``).
* ``prepare``: raw-volume conversion against load-everything-then-resample (``icpcv.prepare.bench``).
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
import tempfile
import time

TARGETS = {"train": "icpcv.train.bench", "stats": "icpcv.stats.bench", "prepare": "icpcv.prepare.bench"}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_run(argv) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="icpcv bench run", description=__doc__)
    p.add_argument("--budget", type=float, default=300.0, help="seconds allowed (the skeleton's 5 minutes)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="extra arguments for `icpcv run`")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "icpcv", "run", "--folds", "14", "--out", os.path.join(tmp, "run"), "--quiet",
               *args.extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    print(f"command : {' '.join(cmd[1:])}")
    print(f"machine : {_cpu_name()}, {os.cpu_count()} cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"wall    : {seconds:.1f} s")
    print(f"budget  : {args.budget:.0f} s   ratio wall/budget = {seconds / args.budget:.2f}")
    print(proc.stdout.strip())
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    which = argv.pop(0) if argv and argv[0] in (*TARGETS, "run") else "train"
    if which == "run":
        return bench_run(argv)
    mod = importlib.import_module(TARGETS[which])
    return int(mod.main(argv) or 0)


def add_parsers(sub) -> None:
    # listed in the help; the arguments go to the chosen benchmark untouched (see cli.main)
    sub.add_parser("bench", help="benchmarks: train (default), run, stats, prepare", add_help=False)


if __name__ == "__main__":
    sys.exit(main())
