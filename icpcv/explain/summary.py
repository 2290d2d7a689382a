"""The run-level attribution results of ``icpcv run --saliency N``, from the folds' map files.

:func:`write_attribution` (called by the pipeline's ``finish`` after every fold is complete) reads
each fold's ``saliency_<model>.npz`` (:mod:`icpcv.explain.fold`) and writes

* ``attribution.json``: per network model and method, the share of absolute attribution inside the
  lamina band (and the planted marker, when the phantom has one) against the share of the volume it
  occupies, with the monkey-level interval (:func:`icpcv.explain.scoring.score_regions`), the same
  for the randomised copies and the paired comparison; the randomisation sanity check per method
  over folds; the cost per scan per method; the scans mapped. On a cohort without labels (a real
  one) the maps are kept and the scoring is said to be unavailable.
* ``attribution_maps.npz``: what the report draws, so that it needs neither torch nor the folds:
  per model and method the mean absolute map (each scan's map scaled to sum 1) in the phantom's
  reference frame where known (:mod:`icpcv.explain.align`), the lamina's (and marker's) share of
  scans per voxel in that frame, and a few individual scans with their maps and labels.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from icpcv import cohort as cohort_mod
from icpcv.cohort.phantom import LAMINA, MARKER
from icpcv.explain.align import mean_abs_map, phantom_offsets, region_probability, shared_frame
from icpcv.explain.attribution import AttributionMaps
from icpcv.explain.fold import labels_of, read_truth
from icpcv.explain.scoring import RANDOMISED_SUFFIX, score_regions
from icpcv.rundir import RunDir
from icpcv.util import atomic_write_bytes, atomic_write_json, to_jsonable

#: individual scans the report shows per model (the first mapped scans of the first monkeys)
EXAMPLE_SCANS = 3


def read_fold_maps(run: RunDir, n_folds: int, model: str):
    """Every fold's maps of ``model`` that exist, in fold order, one at a time (a generator: at the seed's
    scale a fold's maps are hundreds of MB)."""
    for k in range(n_folds):
        if run.fold(k).saliency(model).exists():
            yield AttributionMaps.load(run.fold(k).saliency(model))


class _RunningMean:
    """:func:`mean_abs_map` (and :func:`region_probability`) over folds without holding every fold's maps:
    the per-fold means weighted by the scans they kept."""

    def __init__(self):
        self.total, self.n = None, 0

    def add(self, mean: np.ndarray, n: int) -> None:
        if n:
            self.total = mean.astype(np.float64) * n + (0 if self.total is None else self.total)
            self.n += n

    def value(self, shape) -> np.ndarray:
        return np.zeros(shape, np.float32) if self.total is None else (self.total / self.n).astype(np.float32)


def _sanity_rows(maps: list[AttributionMaps], model: str) -> list[dict]:
    """The folds' randomisation checks summarised per method: mean final rho over the folds where it applies."""
    by_method: dict[str, list[dict]] = {}
    for m in maps:
        for check in m.extra.get("sanity", []):
            by_method.setdefault(check["method"], []).append(check | {"fold": m.extra.get("fold")})
    rows = []
    for method, checks in by_method.items():
        ok = [c for c in checks if c.get("applicable")]
        rho_abs = [c["final_rho_abs"] for c in ok]
        rho_signed = [c["final_rho_signed"] for c in ok]
        passed = sum(bool(c.get("passed")) for c in ok)
        threshold = checks[0].get("threshold", 0.5)
        mean_abs = float(np.mean(rho_abs)) if ok else float("nan")
        sentence = (f"{model}, {method.replace('_', ' ')}: not applicable in any fold (every trained network's maps "
                    "are constant)." if not ok else
                    f"{model}, {method.replace('_', ' ')}: with every weighted layer randomised (cascading, "
                    f"Adebayo et al. 2018), Spearman's rho between the trained and the randomised network's maps is "
                    f"{mean_abs:.2f} for absolute and {np.mean(rho_signed):.2f} for signed values (mean over "
                    f"{len(ok)} fold{'s' if len(ok) != 1 else ''}, {passed} below the {threshold:g} pass mark"
                    f"{f'; {len(checks) - len(ok)} not applicable' if len(checks) > len(ok) else ''}): "
                    + ("the maps depend on the learned weights." if mean_abs < threshold else
                       "the maps stay close to the trained network's: they show the input more than the network."))
        rows.append(dict(model=model, method=method, folds=len(checks), applicable=len(ok), passed=passed,
                         threshold=threshold, final_rho_abs=mean_abs,
                         final_rho_signed=float(np.mean(rho_signed)) if ok else float("nan"),
                         per_fold=[dict(fold=c["fold"], final_rho_abs=c["final_rho_abs"],
                                        final_rho_signed=c["final_rho_signed"], passed=c["passed"]) for c in checks],
                         sentence=sentence))
    return rows


def _cost(maps: list[AttributionMaps]) -> dict:
    """Seconds per scan per method, weighted by the scans each fold mapped; the randomised copy's and
    the sanity check's wall time per fold."""
    n = np.array([len(m.scan_ids) for m in maps], float)
    methods = list(maps[0].seconds) if maps else []
    per_scan = {meth: float(np.average([m.seconds.get(meth, np.nan) for m in maps], weights=n))
                for meth in methods} if n.sum() else {}
    return dict(seconds_per_scan=per_scan,
                randomised_wall_seconds_per_fold=float(np.mean([m.extra.get("randomised_wall_seconds", np.nan)
                                                                for m in maps])) if maps else None,
                sanity_wall_seconds_per_fold=float(np.mean([m.extra.get("sanity_wall_seconds", np.nan)
                                                            for m in maps])) if maps else None)


def write_attribution(run_dir, progress=None) -> dict | None:
    """Score and summarise the folds' maps into ``attribution.json`` and ``attribution_maps.npz``;
    returns the JSON's dict (None when no fold has maps)."""
    run = RunDir(run_dir)
    rec = run.read_record()
    cfg = rec.config
    truth = read_truth(run.cohort)
    coh = cohort_mod.load(run.cohort)
    networks = [m for m in cfg.models if any(run.fold(k).saliency(m).exists() for k in range(rec.n_folds))]
    if not networks:
        return None
    regions = ["lamina"] + (["marker"] if truth and truth.get("shortcut") else [])
    scored = truth is not None and "scans" in truth
    aligned = False
    arrays: dict[str, np.ndarray] = {}
    models, tables = [], []
    scan_rows = None
    if scored:
        scan_rows = pd.DataFrame(truth["scans"])
        scan_rows["scan_id"] = scan_rows["scan_id"].astype(str)
        scan_rows = scan_rows.set_index("scan_id", drop=False)
        aligned = shared_frame(scan_rows.loc[coh.scans["scan_id"].astype(str)], truth)  # one frame for every scan
    outlines = {"lamina": (LAMINA, _RunningMean()), "marker": (MARKER, _RunningMean())} if scored else {}
    for model in networks:
        folds, ids, subjects, examples = [], [], [], {}
        means: dict[str, _RunningMean] = {}
        for fm in read_fold_maps(run, rec.n_folds, model):
            shape = next(iter(fm.maps.values())).shape[1:]
            offsets = phantom_offsets(scan_rows.loc[fm.scan_ids], truth) if aligned else None
            for method, stack in fm.maps.items():
                kept = int((np.abs(stack).reshape(len(stack), -1).sum(axis=1) > 0).sum())
                means.setdefault(method, _RunningMean()).add(mean_abs_map(stack, offsets), kept)
            if scored and model == networks[0]:
                labels = labels_of(truth, fm.scan_ids)
                for name, (code, acc) in outlines.items():
                    acc.add(region_probability(labels, offsets, code), len(labels))
            # a few scans to show one by one: the first mapped scan of the first monkeys
            for i, s in enumerate(fm.subjects):
                if len(examples) < EXAMPLE_SCANS and s not in {e[1] for e in examples.values()}:
                    examples[fm.scan_ids[i]] = (i, s, {meth: m[i].astype(np.float32) for meth, m in fm.maps.items()})
            ids += fm.scan_ids
            subjects += fm.subjects
            if fm.regions is not None:
                tables.append(fm.regions)
            fm.maps = {}  # what follows needs the times, the checks and the ids only
            folds.append(fm)
        methods = list(means)
        for method, acc in means.items():
            arrays[f"mean__{model}__{method}"] = acc.value(shape)
        ex_ids = list(examples)
        arrays[f"example_scan_id__{model}"] = np.asarray(ex_ids, dtype=str)
        arrays[f"example_subject__{model}"] = np.asarray([examples[x][1] for x in ex_ids], dtype=str)
        if coh.has_volumes and ex_ids:
            arrays[f"example_volume__{model}"] = np.asarray(cohort_mod.VolumeStore(coh).get(ex_ids), np.float32)
            for method in methods:
                arrays[f"example_map__{model}__{method}"] = np.stack([examples[x][2][method] for x in ex_ids])
            if scored:
                arrays[f"example_labels__{model}"] = labels_of(truth, ex_ids)
        maps = folds
        models.append(dict(model=model, methods=methods, n_scans=len(ids), n_subjects=len(set(subjects)),
                           folds=[m.extra.get("fold") for m in maps], sanity=_sanity_rows(maps, model),
                           cost=_cost(maps), settings=maps[0].settings))
    for name, (code, acc) in outlines.items():
        if name in regions or name == "lamina":
            arrays[f"outline__{name}"] = acc.value(shape)
    out = dict(run_key=rec.key, n_per_monkey=cfg.saliency, methods=list(cfg.saliency_methods),
               models=models, regions=regions, scoring_available=bool(scored and tables),
               aligned=bool(aligned), shortcut=(truth or {}).get("shortcut"),
               definition=("share of absolute attribution inside the region (mean over a monkey's mapped scans, then "
                           "over monkeys) against the share of the volume it occupies; interval over monkeys"))
    if scored and tables:
        region_rows = pd.concat(tables, ignore_index=True)
        scores = score_regions(region_rows, regions=regions, n_boot=cfg.n_boot, seed=cfg.seed,
                               ci_level=cfg.ci_level)
        out["scores"] = scores.to_dict()
        out["table"] = scores.table().to_dict("records")
        # every labelled region's share, trained and randomised (no intervals): where the rest goes
        g = region_rows.assign(a=region_rows["attribution"] / region_rows["attribution_total"].where(
            region_rows["attribution_total"] > 0), v=region_rows["voxels"] / region_rows["voxels_total"])
        per_monkey = g.groupby(["model", "method", "region", "subject"], sort=False)[["a", "v"]].mean()
        out["all_regions"] = (per_monkey.groupby(["model", "method", "region"], sort=False).mean().reset_index()
                              .rename(columns={"a": "attribution_share", "v": "volume_share"}).to_dict("records"))
        out["summary"] = scores.summary()
    else:
        out["scores"] = None
        out["note"] = ("the cohort has no anatomical labels (only the phantom's are known), so the maps are saved "
                       "per fold but the region shares cannot be scored")
        out["summary"] = out["note"]
    out["summary"] += "\n" + "\n".join(r["sentence"] for m in models for r in m["sanity"])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(run.attribution_maps_npz, buf.getvalue())
    atomic_write_json(run.attribution_json, to_jsonable(out))
    if progress:
        lines = [r["sentence"] for r in (out["scores"] or {}).get("results", [])
                 if not r["model"].endswith(RANDOMISED_SUFFIX)]
        for line in lines or [out.get("note", "")]:
            progress.message(f"attribution: {line}")
    return out


def read_attribution_maps(path) -> dict[str, np.ndarray]:
    """``attribution_maps.npz`` as a dict (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


