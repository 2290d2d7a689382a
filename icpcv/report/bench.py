"""``icpcv bench report RUN_DIR``: the cost of drawing a run's report figures, against savefig's own
``bbox_inches="tight"`` measured in the same run.

The report's figures are built from the run directory (nothing is written there), then drawn to PNG
bytes twice from freshly built figures: once with :func:`icpcv.report.figures.to_png` (the tight box
measured on the laid-out figure and handed to savefig: one draw per figure) and once with
``savefig(bbox_inches="tight")`` (a dry draw to measure, then the real one). Prints, per round and
in sum, the seconds of each, the ratio, and whether the PNG bytes are the same for every figure.
Building the figures (their layout included) is timed apart: it is the same for both.
"""
from __future__ import annotations

import argparse
import io
import os
import time

from icpcv.plausible import check_parsed
from icpcv.report import build
from icpcv.report import figures as F
from icpcv.report.rundata import load_run
from icpcv.util import cpu_name


def _tight_png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="icpcv bench report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished run directory (read only)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each drawing every figure both ways (default 3)")
    args = p.parse_args(argv)
    check_parsed(p, args, "bench")  # every number against its range (icpcv.plausible)
    data = load_run(args.run_dir)
    built, ours, theirs, same, names = 0.0, 0.0, 0.0, True, []

    def figures():
        t0 = time.perf_counter()
        made = [f for fs in build.build_run_figures(data, data.stats).values() for f in fs]
        return made, time.perf_counter() - t0

    for r in range(args.rounds):
        a, ta = figures()
        t0 = time.perf_counter()
        pa = [F.to_png(f.fig) for f in a]
        t_ours = time.perf_counter() - t0
        b, tb = figures()
        t0 = time.perf_counter()
        pb = [_tight_png(f.fig, F.DPI) for f in b]
        t_theirs = time.perf_counter() - t0
        same &= pa == pb
        names = [f.name for f in a]
        built, ours, theirs = built + ta + tb, ours + t_ours, theirs + t_theirs
        print(f"round {r + 1}: {len(a)} figures; to_png {t_ours:.2f} s, savefig tight {t_theirs:.2f} s, "
              f"ratio {t_theirs / t_ours:.2f}")
    print(f"run      : {args.run_dir} ({', '.join(names)})")
    print(f"machine  : {cpu_name()}, {os.cpu_count()} cores")
    print(f"building : {built / (2 * args.rounds):.2f} s per set of figures (layout included; the same for both)")
    print(f"drawing  : to_png {ours / args.rounds:.2f} s, savefig(bbox_inches='tight') {theirs / args.rounds:.2f} s "
          f"per set; ratio {theirs / ours:.2f}")
    print(f"PNG bytes: {'the same for every figure' if same else 'DIFFERENT'}")
    return 0 if same else 1
