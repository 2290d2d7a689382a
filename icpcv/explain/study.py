"""A standalone attribution study on the phantom: leave-one-monkey-out CNNs, their maps, scored.

Until ``icpcv run --saliency N`` exists (it will do this inside each fold of a run), this runs the
same steps on its own, for checking and for the figures of the README:

1. the phantom (``--signal``, optional planted shortcut) and a leave-one-monkey-out fold plan
   with inner-validation monkeys (:func:`icpcv.folds.make_plan`, as a run makes it);
2. per fold, the CNN fitted as the run fits it (:func:`fit_cnn`: the estimator
   :class:`~icpcv.models.network.NetworkModel`, trained on the training monkeys and early-stopped
   on the inner-validation ones), the held-out monkey predicted, and up to ``n_scans`` of its scans
   mapped (:func:`icpcv.explain.attribution.sample_scans`) by the fitted ``network_`` with its
   ``standardiser_``;
3. the maps reduced to attribution per region (:func:`icpcv.explain.scoring.region_table`) and
   scored over monkeys (:func:`icpcv.explain.scoring.score_regions`), the lamina and, with a
   shortcut, the marker;
4. optionally the randomisation sanity check on the first fold whose network uses the scan, and
   figures.

    python -m icpcv.explain.study --signal 1 --saliency 8 --out reports/attribution_s1
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icpcv.cohort.phantom import LAMINA, LABEL_NAMES, ShortcutMarker, make_cohort, phantom_labels
from icpcv.explain.align import mean_abs_map, phantom_offsets, region_probability
from icpcv.explain.attribution import DEFAULT_METHODS, AttributionMaps, attribute_scans, sample_scans
from icpcv.explain.sanity import RandomisationCheck, randomisation_check, randomised_copy, weighted_layers
from icpcv.explain.scoring import RANDOMISED_SUFFIX, AttributionScores, region_table, score_regions
from icpcv.cohort import ScanSet
from icpcv.config import RunConfig, TrainConfig
from icpcv.folds import make_plan
from icpcv.models.base import FitContext
from icpcv.models.network import NetworkModel
from icpcv.run.fold import training_seed
from icpcv.train.loop import pick_device
from icpcv.util import atomic_write_json, atomic_write_text, to_jsonable


def fit_cnn(name: str, shape, train: ScanSet, val: ScanSet, *, seed: int = 0, device="cpu",
            **train_kw) -> NetworkModel:
    """The CNN ``name`` fitted as a run fits it (:class:`~icpcv.models.network.NetworkModel`: seeded
    initialisation, the network's augmentation, early stopping on ``val``), with the run's default
    :class:`~icpcv.config.TrainConfig` changed by ``train_kw``. The fitted network is ``.network_``,
    the fold's training statistics ``.standardiser_``."""
    context = FitContext(train=replace(TrainConfig(), **train_kw), seed=seed, shape=tuple(shape), device=device)
    return NetworkModel(name, context).fit(train, val)


@dataclass
class PhantomStudy:
    """What :func:`phantom_attribution_study` found; ``summary()`` and ``to_dict()``."""

    settings: dict
    predictions: pd.DataFrame  # fold, subject, scan_id, y_true, y_pred, mapped
    regions: pd.DataFrame  # region_table rows with model, method, fold
    scores: AttributionScores
    maps: dict[int, AttributionMaps] = field(repr=False)
    mean_maps: dict[str, np.ndarray] = field(repr=False)  # method -> mean |map| in the phantom's frame
    lamina_outline: np.ndarray | None = field(default=None, repr=False)
    randomisation: list[RandomisationCheck] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def mae_by_subject(self) -> pd.DataFrame:
        p = self.predictions.assign(abs_error=(self.predictions["y_pred"] - self.predictions["y_true"]).abs())
        return p.groupby("subject", sort=False)["abs_error"].mean().rename("mae").reset_index()

    def _mae_by_marker(self) -> str:
        informative = set(self.settings.get("informative_subjects") or [])
        if not informative:
            return ""
        mae = self.mae_by_subject()
        inside = mae["subject"].isin(informative)
        return (f"; {mae.loc[inside, 'mae'].mean():.2f} mmHg in the monkeys whose marker tracks ICP, "
                f"{mae.loc[~inside, 'mae'].mean():.2f} mmHg in the others")

    def summary(self) -> str:
        s = self.settings
        lines = [f"Phantom {s['preset']}, signal {s['signal']}, "
                 + (f"shortcut marker (informative monkeys {', '.join(s['informative_subjects'])}), "
                    if s.get("shortcut") else "no shortcut, ")
                 + f"{s['model']}, {len(self.maps)} folds, up to {s['n_scans']} scans mapped per held-out monkey.",
                 f"Held-out MAE of the {s['model']}: {self.mae_by_subject()['mae'].mean():.2f} mmHg "
                 "(mean over monkeys)" + self._mae_by_marker() + ".", self.scores.summary()]
        lines += [c.sentence() for c in self.randomisation]
        lines.append("Cost per scan (s): " + ", ".join(f"{k} {v:.4f}" for k, v in self.seconds.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return to_jsonable(dict(settings=self.settings, scores=self.scores.to_dict(),
                                randomisation=[c.to_dict() for c in self.randomisation],
                                seconds_per_scan=self.seconds, mae_by_subject=self.mae_by_subject().to_dict("records")))


def phantom_attribution_study(*, preset: str = "small", signal: float = 1.0, shortcut: ShortcutMarker | None = None,
                              model: str = "cnn", folds=None, n_scans: int = 8, methods=DEFAULT_METHODS,
                              data_seed: int = 0, seed: int = 0, epochs: int = 30, device: str = "auto",
                              n_subjects: int | None = None, shape=None, sanity: bool = False,
                                                randomised_reference: bool = True, n_boot: int = 10_000, progress=None,
                              **train_kw) -> PhantomStudy:
    """Leave-one-monkey-out CNNs on the phantom, their maps of held-out scans, scored (see the module).

    ``randomised_reference``: also map the same scans with a copy of each fold's network whose
    weighted layers are all re-initialised, scored as model ``<model>_randomised`` and compared
    with the trained network monkey by monkey: the region share that the input alone gives a
    method (see :mod:`icpcv.explain.sanity`).

    ``folds``: indices of the folds to run (default all, one per monkey). The fold plan, the
    training seeds (:func:`icpcv.run.fold.training_seed`) and the sample of mapped scans follow
    from the seeds as in a run, so the study is reproducible on the same hardware; ``train_kw``
    change the run's default :class:`~icpcv.config.TrainConfig`.
    """
    dev = pick_device(device)
    scans, volumes, truth = make_cohort(preset, signal=signal, seed=data_seed, n_subjects=n_subjects, shape=shape,
                                        shortcut=shortcut)
    shape = tuple(volumes.shape[1:])
    plan = make_plan(scans, val_fraction=RunConfig().val_fraction, seed=seed)  # the run's plan for these seeds
    index = {s: i for i, s in enumerate(scans["scan_id"])}
    pick = (lambda ids: np.array([index[x] for x in ids]))
    run_folds = [f for f in plan.folds if folds is None or f.index in set(folds)]
    regions = [r for r in LABEL_NAMES if r == "lamina" or (r == "marker" and shortcut is not None)]
    preds, tables, maps_by_fold, mapped_rows = [], [], {}, []
    seconds = {m: [] for m in methods}
    checks = []
    for fold in run_folds:
        t0 = time.perf_counter()

        def part(ids):
            rows = pick(ids)
            return ScanSet.from_arrays(scans.iloc[rows][["scan_id", "subject", "iop", "icp"]], volumes[rows])

        fitted = fit_cnn(model, shape, part(fold.train_scans), part(fold.val_scans),
                         seed=training_seed(seed, fold.index), device=dev, epochs=epochs, **train_kw)
        net, std = fitted.network_, fitted.standardiser_
        test_rows = pick(fold.test_scans)
        y_pred = fitted.predict(part(fold.test_scans))
        chosen = set(sample_scans(fold.test_scans, scans["subject"].to_numpy()[test_rows], n_scans, seed=seed,
                                  fold=fold.index))
        preds.append(pd.DataFrame(dict(fold=fold.index, subject=scans["subject"].to_numpy()[test_rows],
                                       scan_id=list(fold.test_scans), y_true=scans["icp"].to_numpy()[test_rows],
                                       y_pred=y_pred, mapped=[x in chosen for x in fold.test_scans])))
        ids = [x for x in fold.test_scans if x in chosen]
        rows = pick(ids)
        amaps = attribute_scans(net, volumes[rows], scans["iop"].to_numpy(float)[rows], std, scan_ids=ids,
                                subjects=scans["subject"].to_numpy()[rows], methods=methods)
        maps_by_fold[fold.index] = amaps
        labels = phantom_labels(scans.iloc[rows], truth)
        for method in methods:
            seconds[method].append(amaps.seconds[method])
            tables.append(region_table(amaps.maps[method], labels, scan_ids=ids, subjects=amaps.subjects)
                          .assign(model=model, method=method, fold=fold.index))
        if randomised_reference:
            twin = randomised_copy(net, weighted_layers(net), seed=seed * 1000 + fold.index)
            null = attribute_scans(twin, volumes[rows], scans["iop"].to_numpy(float)[rows], std, scan_ids=ids,
                                   subjects=amaps.subjects, methods=methods)
            for method in methods:
                tables.append(region_table(null.maps[method], labels, scan_ids=ids, subjects=amaps.subjects)
                              .assign(model=model + RANDOMISED_SUFFIX, method=method, fold=fold.index))
        mapped_rows.extend(rows)
        # on the first fold whose network uses the scan (an early-stopped epoch 0 maps all zeros)
        if sanity and not checks and any(np.abs(m).max() > 0 for m in amaps.maps.values()):
            vol_std = (volumes[rows].astype(np.float32) - std.vol_mean) / std.vol_std
            iop_std = (scans["iop"].to_numpy(np.float32)[rows] - std.iop_mean) / std.iop_std
            checks = [randomisation_check(net, vol_std, iop_std, method=m, seed=seed) for m in methods]
        if progress:
            progress(f"fold {fold.index + 1}/{len(plan.folds)} (held out {', '.join(fold.held_out)}): "
                     f"MAE {np.mean(np.abs(y_pred - scans['icp'].to_numpy(float)[test_rows])):.2f} mmHg, "
                     f"{len(ids)} scans mapped, {time.perf_counter() - t0:.1f} s")
    region_rows = pd.concat(tables, ignore_index=True)
    scores = score_regions(region_rows, regions=regions, n_boot=n_boot, seed=seed)
    mapped = scans.iloc[mapped_rows]
    offsets = phantom_offsets(mapped, truth)
    mean_maps = {m: mean_abs_map(np.concatenate([maps_by_fold[f.index].maps[m] for f in run_folds]), offsets)
                 for m in methods}
    outline = region_probability(phantom_labels(mapped, truth), offsets, LAMINA)
    settings = dict(preset=preset, signal=signal, shortcut=None if shortcut is None else truth["shortcut"],
                    informative_subjects=(truth.get("shortcut") or {}).get("informative_subjects", []), model=model,
                    folds=[f.index for f in run_folds], n_scans=n_scans, methods=list(methods), data_seed=data_seed,
                    seed=seed, epochs=epochs, device=str(dev), shape=list(shape),
                    n_subjects=int(scans["subject"].nunique()))
    return PhantomStudy(settings, pd.concat(preds, ignore_index=True), region_rows, scores, maps_by_fold, mean_maps,
                        outline, checks, {m: float(np.mean(v)) for m, v in seconds.items()})


def write_study(study: PhantomStudy, out: Path) -> None:
    """Files as a run would hold them: maps per fold, the region table, the scores, the figures."""
    from icpcv.report import attribution_figures as AF  # lazy: the figures need matplotlib, the study does not
    from icpcv.report import figures as F  # lazy: as above

    out = Path(out)
    for k, m in study.maps.items():
        (out / "folds" / f"fold_{k:02d}").mkdir(parents=True, exist_ok=True)
        m.save(out / "folds" / f"fold_{k:02d}" / f"saliency_{study.settings['model']}.npz")
    atomic_write_text(out / "attribution_regions.csv", study.regions.to_csv(index=False))
    atomic_write_text(out / "predictions.csv", study.predictions.to_csv(index=False))
    atomic_write_json(out / "attribution.json", study.to_dict())
    atomic_write_text(out / "summary.md", study.summary() + "\n")
    figures = []
    with F.style():
        for method, mean_map in study.mean_maps.items():
            for projection in (False, True):
                fig = AF.orthogonal_slices_figure(
                    mean_map, outline=study.lamina_outline, projection=projection,
                    title=f"{study.settings['model']}, {method.replace('_', ' ')}: mean absolute attribution "
                          f"(signal {study.settings['signal']:g}{', shortcut' if study.settings['shortcut'] else ''})")
                name = f"attribution_{F.file_stem(study.settings['model'])}_{method}" + ("_projection" * projection)
                figures.append(F.Figure(name, method, "", fig))
    F.render(figures, out / "figures")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m icpcv.explain.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--phantom", default="small")
    p.add_argument("--signal", type=float, default=1.0)
    p.add_argument("--shortcut", action="store_true", help="plant the ShortcutMarker (defaults: strength 1, "
                                                           "half of the monkeys informative)")
    p.add_argument("--informative-share", type=float, default=0.5)
    p.add_argument("--model", default="cnn")
    p.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    p.add_argument("--saliency", type=int, default=8, help="scans mapped per held-out monkey (default 8)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--sanity", action="store_true", help="randomisation check on the first fold whose network uses the scan")
    p.add_argument("--no-randomised-reference", action="store_true",
                   help="do not score the maps of randomised copies of the networks")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    study = phantom_attribution_study(
        preset=args.phantom, signal=args.signal,
        shortcut=ShortcutMarker(informative_share=args.informative_share) if args.shortcut else None,
        model=args.model, folds=None if args.folds is None else [int(x) for x in args.folds.split(",")],
        n_scans=args.saliency, methods=[m.strip() for m in args.methods.split(",")], data_seed=args.data_seed,
        seed=args.seed, epochs=args.epochs, device=args.device, sanity=args.sanity,
        randomised_reference=not args.no_randomised_reference, progress=lambda line: print(line, flush=True))
    print(study.summary())
    if args.out:
        write_study(study, args.out)
        print(f"written to {args.out}")
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
