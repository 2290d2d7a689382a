"""The attribution study on the phantom: a thin driver of ``icpcv run --saliency N``.

It makes the run's configuration (the light ``cnn`` beside the IOP baseline, or ``--model``, the
phantom, ``--saliency N``, optionally the planted shortcut), runs it through
:func:`icpcv.run.pipeline.run` (fold plan, seeds, training, maps per fold in
:mod:`icpcv.explain.fold`, scores in :mod:`icpcv.explain.summary`, report), and prints what
``attribution.json`` says, with the held-out MAE per monkey (split by whether the planted marker
tracks ICP). The same numbers come from

    python -m icpcv run --models ols_iop,cnn --reference ols_iop --saliency 8 --signal 1 [--shortcut] --out DIR

    python -m icpcv.run.attribution_study --signal 1 --saliency 8 --out reports/attribution_s1
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from icpcv.config import SALIENCY_METHODS, RunConfig, TrainConfig
from icpcv.run.pipeline import run
from icpcv.rundir import RunDir
from icpcv.util import read_json


def study_config(*, preset: str = "small", signal: float = 1.0, shortcut: bool = False, model: str = "cnn",
                 n_scans: int = 8, methods=SALIENCY_METHODS, data_seed: int = 0, seed: int = 0, epochs: int = 30,
                 n_boot: int = 10_000, **train_kw) -> RunConfig:
    """The run configuration of the study: ``icpcv run --models ols_iop,MODEL --saliency N`` on the phantom
    (the IOP baseline costs nothing and gives the network a reference)."""
    return RunConfig(phantom=preset, signal=signal, data_seed=data_seed, models=("ols_iop", model), seed=seed,
                     train=replace(TrainConfig(), epochs=epochs, **train_kw), reference="ols_iop", n_boot=n_boot,
                     saliency=int(n_scans), saliency_methods=tuple(methods), shortcut=bool(shortcut))


def phantom_attribution_study(out, *, device: str = "auto", progress=None, **config) -> dict:
    """Run the study into the run directory ``out`` (a rerun resumes it); returns ``attribution.json``
    with ``mae_by_subject`` added (the network's held-out MAE per monkey, and whether its marker tracks ICP).
    ``config``: the keywords of :func:`study_config`."""
    cfg = study_config(**config)
    run(cfg, Path(out), device=device, progress=progress)
    rundir = RunDir(out)
    data = read_json(rundir.attribution_json)
    preds = rundir.read_predictions()
    preds = preds[preds["model"] == cfg.models[-1]]
    informative = set(((data.get("shortcut") or {}).get("informative_subjects")) or [])
    mae = (preds.assign(abs_error=(preds["y_pred"] - preds["y_true"]).abs())
           .groupby("subject", sort=False)["abs_error"].mean().rename("mae").reset_index())
    mae["marker_tracks_icp"] = mae["subject"].isin(informative)
    data["mae_by_subject"] = mae.to_dict("records")
    return data


def summary(data: dict) -> str:
    """The study's result in a few lines: MAE (by marker group with a shortcut), the scores, the sanity check, the cost."""
    mae = pd.DataFrame(data["mae_by_subject"])
    line = f"Held-out MAE: {mae['mae'].mean():.2f} mmHg (mean over monkeys)"
    if mae["marker_tracks_icp"].any():
        line += (f"; {mae.loc[mae.marker_tracks_icp, 'mae'].mean():.2f} mmHg in the monkeys whose marker tracks ICP, "
                 f"{mae.loc[~mae.marker_tracks_icp, 'mae'].mean():.2f} mmHg in the others")
    cost = "; ".join(f"{m['model']}: " + ", ".join(f"{k} {v:.4f}" for k, v in m["cost"]["seconds_per_scan"].items())
                     for m in data["models"])
    return "\n".join([line + ".", data["summary"], f"Cost per scan (s): {cost}"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m icpcv.run.attribution_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--phantom", default="small")
    p.add_argument("--signal", type=float, default=1.0)
    p.add_argument("--shortcut", action="store_true", help="plant the ShortcutMarker (its defaults: strength 1, "
                                                           "half of the monkeys informative)")
    p.add_argument("--model", default="cnn")
    p.add_argument("--saliency", type=int, default=8, help="scans mapped per held-out monkey (default 8)")
    p.add_argument("--methods", default=",".join(SALIENCY_METHODS))
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=10_000)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True, help="the run directory (a rerun resumes it)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = phantom_attribution_study(
        args.out, device=args.device, preset=args.phantom, signal=args.signal, shortcut=args.shortcut,
        model=args.model, n_scans=args.saliency, methods=[m.strip() for m in args.methods.split(",")],
        data_seed=args.data_seed, seed=args.seed, epochs=args.epochs, n_boot=args.n_boot)
    print(summary(data))
    print(f"run directory {args.out} (report: {RunDir(args.out).index_html}); wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
