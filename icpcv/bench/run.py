"""``icpcv bench run``: wall time of the default ``python -m icpcv run --folds 14`` on this machine,
against the 5-minute budget of the walking skeleton."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from icpcv.plausible import check_parsed
from icpcv.util import cpu_name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="icpcv bench run", description=__doc__)
    p.add_argument("--budget", type=float, default=300.0, help="seconds allowed (the skeleton's 5 minutes)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="extra arguments for `icpcv run`")
    args = p.parse_args(argv)
    check_parsed(p, args, "bench")  # every number against its range (icpcv.plausible)
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
    print(f"machine : {cpu_name()}, {os.cpu_count()} cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"wall    : {seconds:.1f} s")
    print(f"budget  : {args.budget:.0f} s   ratio wall/budget = {seconds / args.budget:.2f}")
    print(proc.stdout.strip())
    return 0
