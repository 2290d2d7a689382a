"""Attribution maps scored against the phantom's anatomy.

Two steps, so that a run keeps only small tables: :func:`region_table` reduces each map to the
absolute attribution and the voxel count per labelled region (a few numbers per scan, written per
fold), and :func:`score_regions` turns the table of all folds into the monkey-level statistic of
:func:`icpcv.stats.attribution.region_share`, per model and method.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icpcv.cohort.phantom import LABEL_NAMES
from icpcv.stats.attribution import RegionShareComparison, RegionShareResult, compare_region_shares, region_share

#: the model name under which a network's randomised copy is scored (see icpcv.explain.sanity)
RANDOMISED_SUFFIX = "_randomised"

#: columns of :func:`region_table` (the caller adds ``model``, ``method``, ``fold``)
REGION_COLUMNS = ("scan_id", "subject", "region", "attribution", "voxels", "attribution_total", "voxels_total")


def region_table(maps: np.ndarray, labels: np.ndarray, *, scan_ids, subjects, names=LABEL_NAMES) -> pd.DataFrame:
    """Absolute attribution and voxels per scan and region, long format (:data:`REGION_COLUMNS`).

    ``maps`` ``(n, X, Y, Z)`` and ``labels`` ``(n, X, Y, Z)`` integer codes (index into ``names``)
    of the same scans. Every region of ``names`` gets a row per scan, with 0 voxels where absent.
    """
    maps = np.asarray(maps)
    labels = np.asarray(labels)
    if maps.shape != labels.shape:
        raise ValueError(f"maps {maps.shape} and labels {labels.shape} must have the same shape")
    n, k = len(maps), len(names)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"label codes must lie in 0..{k - 1} ({', '.join(names)}); "
                         f"found {labels.min()}..{labels.max()}")
    flat_labels = labels.reshape(n, -1).astype(np.intp)
    flat_abs = np.abs(maps.reshape(n, -1).astype(np.float64))
    rows = []
    for i in range(n):
        attr = np.bincount(flat_labels[i], weights=flat_abs[i], minlength=k)
        vox = np.bincount(flat_labels[i], minlength=k)
        total = float(flat_abs[i].sum())
        for code, name in enumerate(names):
            rows.append((str(scan_ids[i]), str(subjects[i]), name, float(attr[code]), int(vox[code]), total,
                         int(flat_labels.shape[1])))
    return pd.DataFrame(rows, columns=list(REGION_COLUMNS))


@dataclass
class AttributionScores:
    """Region shares per (model, method, region): :class:`RegionShareResult` each; and, where a model's
    randomised copy was scored too, the paired comparison of the two (:class:`RegionShareComparison`)."""

    results: list[RegionShareResult]
    comparisons: list[RegionShareComparison] = field(default_factory=list)

    def get(self, model=None, method=None, region="lamina") -> RegionShareResult:
        for r in self.results:
            if (model is None or r.model == model) and (method is None or r.method == method) and r.region == region:
                return r
        raise KeyError(f"no score for model={model!r}, method={method!r}, region={region!r}")

    def table(self) -> pd.DataFrame:
        """One row per result: the figures of the report's lamina share table."""
        return pd.DataFrame([dict(model=r.model, method=r.method, region=r.region, monkeys=r.n_subjects,
                                  scans=r.n_scans, attribution_share=r.attribution_share,
                                  volume_share=r.volume_share, enrichment=r.enrichment,
                                  enrichment_lo=r.enrichment_ci[0], enrichment_hi=r.enrichment_ci[1],
                                  p_signflip=r.p_value) for r in self.results])

    def summary(self) -> str:
        return "\n".join([r.sentence() for r in self.results] + [c.sentence() for c in self.comparisons])

    def to_dict(self) -> dict:
        return dict(definition=("share of absolute attribution inside the region (mean over scans, then over "
                                "monkeys) against the share of the volume the region occupies; interval over "
                                "monkeys"),
                    results=[r.to_dict() for r in self.results],
                    against_randomised=[c.to_dict() for c in self.comparisons])


def score_regions(table: pd.DataFrame, *, regions=("lamina",), n_boot: int = 10_000, seed: int = 0,
                  ci_level: float = 0.95, ci_method: str = "t") -> AttributionScores:
    """:func:`region_share` for each model, method and region of a :func:`region_table` of all folds.

    ``table`` has :data:`REGION_COLUMNS` plus ``model`` and ``method`` (``fold`` is carried along
    but not needed: under leave-one-monkey-out each monkey's scans were mapped by its own fold's
    network). A model ``<name>_randomised`` is taken as ``<name>``'s randomised copy and the two are
    compared, paired by monkey, per method and region.
    """
    missing = [c for c in ("model", "method", *REGION_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(f"the region table lacks column(s) {', '.join(missing)}")
    results = []
    for (model, method), part in table.groupby(["model", "method"], sort=False):
        for region in regions:
            rows = part[part["region"] == region]
            if rows.empty:
                raise ValueError(f"region {region!r} not in the table; it has {', '.join(part['region'].unique())}")
            results.append(region_share(rows["subject"], rows["attribution"], rows["attribution_total"],
                                        rows["voxels"], rows["voxels_total"], region=region, model=str(model),
                                        method=str(method), n_boot=n_boot, seed=seed, ci_level=ci_level,
                                        ci_method=ci_method))
    by_key = {(r.model, r.method, r.region): r for r in results}
    comparisons = [compare_region_shares(r, by_key[(r.model + RANDOMISED_SUFFIX, r.method, r.region)])
                   for r in results if (r.model + RANDOMISED_SUFFIX, r.method, r.region) in by_key]
    return AttributionScores(results, comparisons)
