"""Attribution maps inside a run's fold job (``icpcv run --saliency N``).

After a network model of a fold has been fitted and has predicted the held-out scans,
:func:`attribute_fold` maps up to N of each held-out monkey's scans
(:func:`~icpcv.explain.attribution.sample_scans`, seeded by the run's seed and the fold) with the
fitted ``network_`` and its ``standardiser_``, in mmHg, by each of the run's methods; and, on the
same scans:

* the maps of a **randomised copy** of the network (every weighted layer re-initialised, seeded by
  the fold's training seed), reduced to their region table only: the share any network's maps
  put on a region through the input's contrast alone (model ``<name>_randomised``);
* the **randomisation sanity check** (Adebayo et al. 2018, cascading,
  :func:`~icpcv.explain.sanity.randomisation_check`) on the first :data:`SANITY_SCANS` mapped scans;
* where the cohort is the phantom (``cohort/truth.json``), the **region table**: absolute
  attribution and voxels per labelled region and scan (:func:`~icpcv.explain.scoring.region_table`).

:func:`write_fold_saliency` saves all of it as one compact ``.npz`` named by the fold's folder
(``FoldDir.saliency``), atomically and before the fold's record.json, and returns what the record
keeps (the file's sha256, so that a changed or missing map file makes the fold incomplete, as the
predictions do). The run-level scores and figures are :mod:`icpcv.explain.summary`'s.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from icpcv.cohort import ScanSet
from icpcv.cohort.phantom import phantom_labels
from icpcv.explain.attribution import DEFAULT_METHODS, AttributionMaps, attribute_scans, model_device, sample_scans
from icpcv.explain.sanity import randomisation_check, randomised_copy, weighted_layers
from icpcv.explain.scoring import RANDOMISED_SUFFIX, region_table
from icpcv.rundir import CohortDir, FoldDir
from icpcv.util import file_sha256, read_json

#: scans of each fold on which the randomisation sanity check runs (it maps them once per weighted layer)
SANITY_SCANS = 2


def is_network(model) -> bool:
    """A fitted model with a network to map (:class:`icpcv.models.network.NetworkModel`)."""
    return getattr(model, "network_", None) is not None and getattr(model, "standardiser_", None) is not None


def read_truth(cohort: CohortDir) -> dict | None:
    """The phantom's generating parameters (``cohort/truth.json``), or None for a cohort without them."""
    return read_json(cohort.truth_json) if cohort.truth_json.exists() else None


def labels_of(truth: dict | None, scan_ids) -> np.ndarray | None:
    """Label volumes of these phantom scans (:func:`icpcv.cohort.phantom.phantom_labels`); None without truth."""
    if not truth or "scans" not in truth:
        return None
    rows = pd.DataFrame(truth["scans"])
    rows["scan_id"] = rows["scan_id"].astype(str)
    return phantom_labels(rows.set_index("scan_id", drop=False).loc[list(scan_ids)], truth)


def _batch_size(model) -> int | None:
    """On a GPU, the training batch (known to fit with gradients); on the CPU the methods' defaults."""
    if model_device(model.network_).type != "cuda":
        return None
    return max(1, int(model.context.train.batch_size))


def attribute_fold(model, test: ScanSet, n: int, *, name: str, fold: int, seed: int = 0, methods=None,
                   truth: dict | None = None, randomised: bool = True, sanity_scans: int = SANITY_SCANS
                   ) -> AttributionMaps:
    """Maps of up to ``n`` held-out scans per monkey by a fitted network model, with the region table
    (where ``truth`` gives labels), the randomised copy's table and the sanity check (see the module).

    ``seed`` is the run's seed (the sample of scans), ``fold`` the fold's index; the randomised copy
    is drawn from ``seed * 1000 + fold``, the fold's training seed.
    """
    methods = tuple(methods or DEFAULT_METHODS)
    frame = test.frame.reset_index(drop=True)
    ids = sample_scans(frame["scan_id"], frame["subject"], n, seed=seed, fold=fold)
    rows = frame.set_index(frame["scan_id"].astype(str)).loc[ids]
    subjects = rows["subject"].astype(str).tolist()
    volumes = np.asarray(test.get_volumes(ids))
    iop = rows["iop"].to_numpy(float)
    net, std = model.network_, model.standardiser_
    kw = dict(scan_ids=ids, subjects=subjects, methods=methods, batch_size=_batch_size(model))
    maps = attribute_scans(net, volumes, iop, std, **kw)
    labels = labels_of(truth, ids)
    tables = []

    def table(amaps, as_model):
        if labels is not None:
            for method in methods:
                tables.append(region_table(amaps.maps[method], labels, scan_ids=ids, subjects=subjects)
                              .assign(model=as_model, method=method, fold=fold))

    table(maps, name)
    extra: dict = dict(model=name, fold=fold, labels=labels is not None)
    if randomised:
        t0 = time.perf_counter()
        twin = randomised_copy(net, weighted_layers(net), seed=seed * 1000 + fold)
        null = attribute_scans(twin, volumes, iop, std, **kw)
        table(null, name + RANDOMISED_SUFFIX)
        extra["randomised_seconds_per_scan"] = null.seconds
        extra["randomised_wall_seconds"] = time.perf_counter() - t0
        del twin, null
    if sanity_scans:
        t0 = time.perf_counter()
        k = min(int(sanity_scans), len(ids))
        vol_std = (volumes[:k].astype(np.float32) - std.vol_mean) / std.vol_std
        iop_std = (iop[:k].astype(np.float32) - std.iop_mean) / std.iop_std
        extra["sanity"] = [randomisation_check(net, vol_std, iop_std, method=m, seed=seed * 1000 + fold,
                                               batch_size=kw["batch_size"]).to_dict() for m in methods]
        extra["sanity_scans"] = ids[:k]
        extra["sanity_wall_seconds"] = time.perf_counter() - t0
    maps.regions = pd.concat(tables, ignore_index=True) if tables else None
    maps.extra = extra
    return maps


def write_fold_saliency(fold_dir: FoldDir, cohort: CohortDir, name: str, model, test: ScanSet, *, n: int,
                        seed: int, methods=None) -> dict:
    """:func:`attribute_fold` for fold ``fold_dir.k``, saved to ``fold_dir.saliency(name)`` (atomic);
    returns the record's entry: file name, sha256, scans mapped and the seconds per scan per method."""
    t0 = time.perf_counter()
    maps = attribute_fold(model, test, n, name=name, fold=fold_dir.k, seed=seed, methods=methods,
                          truth=read_truth(cohort))
    path = fold_dir.saliency(name)
    maps.save(path)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dict(file=path.name, sha256=file_sha256(path), n_scans=len(maps.scan_ids),
                seconds_per_scan=maps.seconds, wall_seconds=time.perf_counter() - t0)
