"""``icpcv predict RUN_DIR --manifest TABLE --out DIR``: new monkeys' ICP from their scans, by the ensemble of the
run's fold models, with an interval that holds over monkeys (docs/prediction.md).

Without ICP in the table the page gives predictions and intervals; with it, also the MAE and the coverage
achieved. ``--new-subjects N`` (a phantom run) makes N new phantom monkeys of the run's population and predicts
them: the quick start's check that the interval does what it says.
"""
from __future__ import annotations

import sys

from icpcv.errors import InputError


def _models(text):
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def cmd_predict(args) -> int:
    from icpcv.predict import PredictConfig, predict  # lazy: start-up time (torch, pandas)
    from icpcv.progress import Progress  # lazy: start-up time

    import torch  # lazy: start-up time

    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    try:
        return _predict(args, PredictConfig, predict, Progress)
    finally:  # an in-process caller (a notebook, a test) keeps its own thread count
        torch.set_num_threads(before)


def _predict(args, PredictConfig, predict, Progress) -> int:
    if args.new_subjects is not None and args.new_subjects < 1:
        raise InputError(f"--new-subjects must be at least 1, got {args.new_subjects}")
    cfg = PredictConfig(run_dir=args.run_dir, out=args.out, manifest=args.manifest, scans_dir=args.scans,
                        models=_models(args.models), level=args.level, skip_bad_scans=args.skip_bad_scans,
                        new_subjects=args.new_subjects or 0, new_seed=args.new_seed, device=args.device)
    meta = predict(cfg, progress=Progress("lines", stream=sys.stderr))
    pct = f"{100 * meta['level']:g}%"
    print(f"{meta['n_scans']} scan(s) of {meta['n_subjects']} monkey(s) predicted into {args.out}/predictions.csv "
          f"(page: {args.out}/index.html)")
    for name, s in meta["summary"].items():
        width = "unbounded" if s["mean_width"] is None else f"{s['mean_width']:.1f} mmHg"
        line = f"  {name}: mean {pct} interval width {width}"
        if "mae" in s:
            line += f"; MAE {s['mae']:.2f} mmHg, coverage {100 * s['coverage']:.0f}% of {s['n_labelled']} labelled scans"
        print(line)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="ICP of new monkeys from their scans, with an interval that holds over monkeys",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished `icpcv run` directory (split by subjects)")
    p.add_argument("--manifest", help="the new scans: a table in the format `run` reads (ICP optional)")
    p.add_argument("--scans", help="seed-format table: folder with <id>.pt")
    p.add_argument("--new-subjects", type=int, metavar="N",
                   help="a phantom run: make N new monkeys of its population (not in the run) and predict them")
    p.add_argument("--new-seed", type=int, default=0, help="which new phantom monkeys (default 0)")
    p.add_argument("--out", required=True, help="output folder (predictions.csv, subjects.csv, index.html, ...)")
    p.add_argument("--models", help="comma-separated models of the run (default: all of them), e.g. cnn,ols_iop")
    p.add_argument("--level", type=float, default=0.9, help="coverage level of the intervals, in (0, 1) (default 0.9)")
    p.add_argument("--skip-bad-scans", action="store_true",
                   help="record unusable or differently prepared volumes as dropped rows instead of stopping")
    p.add_argument("--device", default="cpu", help="torch device for the networks (default cpu)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.set_defaults(func=cmd_predict)
