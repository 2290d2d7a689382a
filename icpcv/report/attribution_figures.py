"""Figures of attribution maps: orthogonal slices through the optic nerve head.

Like :mod:`icpcv.report.figures`, each function returns a matplotlib Figure (no pyplot state) and
is meant to be called inside ``figures.style()``. Volumes are ``(X, Y, Z)`` with Z = depth; the
three views are the B-scan (X across, depth down, at one Y), the sagittal section (Y across, depth
down, at one X) and the en-face section (X across, Y down, at one depth).
"""
from __future__ import annotations

import numpy as np

from icpcv.report.figures import subplots

VIEWS = ("B-scan", "sagittal", "en-face")
MAP_CMAP = "magma"
OUTLINE_COLOR = "#56B4E9"  # sky blue of the colour-blind palette: visible on magma


def slice_centre(shape, outline: np.ndarray | None = None, mean_map: np.ndarray | None = None) -> tuple[int, int, int]:
    """Where the three slices cross: the lateral centre (the optic nerve head in the phantom's frame)
    and the depth where ``outline`` (e.g. the lamina's share of scans) is largest in the central
    column, else where ``mean_map`` has most mass, else mid-depth."""
    cx, cy = shape[0] // 2, shape[1] // 2
    if outline is not None and np.nanmax(outline) > 0:
        column = outline[max(cx - 1, 0):cx + 1, max(cy - 1, 0):cy + 1].mean(axis=(0, 1))
        return cx, cy, int(np.argmax(column))
    if mean_map is not None and np.nansum(mean_map) > 0:
        return cx, cy, int(np.argmax(np.nansum(mean_map, axis=(0, 1))))
    return cx, cy, shape[2] // 2


def _sections(volume: np.ndarray, centre) -> list[np.ndarray]:
    """The three views as 2-D arrays in display orientation (rows down the image)."""
    cx, cy, cz = centre
    return [volume[:, cy, :].T, volume[cx, :, :].T, volume[:, :, cz].T]


def _projections(volume: np.ndarray) -> list[np.ndarray]:
    """The three views as means along the axis each one looks down (same orientation as :func:`_sections`)."""
    return [volume.mean(axis=1).T, volume.mean(axis=0).T, volume.mean(axis=2).T]


def _axes_labels(ax, view: str, centre, projected: bool = False) -> None:
    if projected:
        ax.set(xlabel={"sagittal": "Y (voxel)"}.get(view, "X (voxel)"),
               ylabel="Y (voxel)" if view == "en-face" else "depth Z (voxel)",
               title={"B-scan": "B-scan view, mean over Y", "sagittal": "sagittal view, mean over X",
                      "en-face": "en-face view, mean over depth"}[view])
        ax.grid(False)
        return
    cx, cy, cz = centre
    if view == "B-scan":
        ax.set(xlabel="X (voxel)", ylabel="depth Z (voxel)", title=f"B-scan at Y = {cy}")
    elif view == "sagittal":
        ax.set(xlabel="Y (voxel)", ylabel="depth Z (voxel)", title=f"sagittal at X = {cx}")
    else:
        ax.set(xlabel="X (voxel)", ylabel="Y (voxel)", title=f"en-face at Z = {cz}")
    ax.grid(False)


def orthogonal_slices_figure(mean_map: np.ndarray, *, outline: np.ndarray | None = None, centre=None,
                             projection: bool = False, title: str = "Mean absolute attribution",
                             outline_label: str = "lamina band",
                             colorbar_label: str = "share of a scan's absolute attribution per voxel"):
    """Three orthogonal slices of a (mean) attribution volume, with an optional outline.

    ``projection=True`` shows each view as the mean along the axis it looks down instead of one
    slice: attribution off the optic nerve head (a corner marker, the volume's edge) shows there.

    ``mean_map`` ``(X, Y, Z)``, e.g. :func:`icpcv.explain.align.mean_abs_map` in the phantom's
    reference frame; ``outline`` a volume of the same shape in [0, 1] whose 0.5 contour is drawn
    (e.g. :func:`icpcv.explain.align.region_probability` of the lamina: where at least half the
    scans have it). ``centre`` (X, Y, Z) defaults to :func:`slice_centre`. One colour scale for
    the three panels, from 0 to the largest value shown. Returns None for an empty map.
    """
    mean_map = np.asarray(mean_map, dtype=float)
    if mean_map.ndim != 3 or not np.isfinite(mean_map).any():
        return None
    if outline is not None and np.shape(outline) != mean_map.shape:
        raise ValueError(f"outline {np.shape(outline)} and map {mean_map.shape} differ in shape")
    centre = tuple(int(c) for c in (centre or slice_centre(mean_map.shape, outline, mean_map)))
    cut = _projections if projection else (lambda v: _sections(v, centre))
    sections = cut(mean_map)
    vmax = max(float(np.nanmax(s)) for s in sections) or 1.0
    fig, axes = subplots(1, 3, figsize=(11.5, 4.4))
    fig.set_layout_engine("constrained")  # room for the shared colour bar and the three depth labels
    for ax, view, sec in zip(axes, VIEWS, sections):
        im = ax.imshow(sec, cmap=MAP_CMAP, vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        if outline is not None:
            shown = np.asarray(outline, dtype=float)
            # projected, the outline is where the structure lies in any slice along the view
            o = (cut(shown >= 0.5)[VIEWS.index(view)] > 0).astype(float) if projection else cut(shown)[VIEWS.index(view)]
            if o.max() >= 0.5 > o.min():
                ax.contour(o, levels=[0.5], colors=[OUTLINE_COLOR], linewidths=1.2)
        _axes_labels(ax, view, centre, projected=projection)
    cbar = fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.01)
    cbar.set_label(colorbar_label, fontsize="small")
    fig.suptitle(title, fontweight="bold")
    if outline is not None:
        fig.supxlabel(f"blue line: {outline_label} (where at least half of the scans have it)",
                      fontsize="small", color="0.3")
    return fig


def scan_maps_figure(volumes: np.ndarray, maps: np.ndarray, *, labels: np.ndarray | None = None,
                     outline_code: int | None = None, scan_names=None, centre=None,
                     title: str = "Scans and their attribution"):
    """A few individual scans, one row each: the B-scan, its absolute attribution on the same
    B-scan and the attribution en-face (at the lamina's depth when labels are given), with the
    outline of label ``outline_code`` drawn where ``labels`` are given. Returns None without scans."""
    volumes, maps = np.asarray(volumes), np.abs(np.asarray(maps, dtype=float))
    if len(volumes) == 0:
        return None
    if volumes.shape != maps.shape:
        raise ValueError(f"volumes {volumes.shape} and maps {maps.shape} differ in shape")
    n = len(volumes)
    fig, axes = subplots(n, 3, figsize=(10.5, 2.9 * n + 0.6), squeeze=False)
    for i in range(n):
        mask = None if labels is None or outline_code is None else (np.asarray(labels[i]) == outline_code).astype(float)
        c = tuple(centre or slice_centre(volumes.shape[1:], mask, maps[i]))
        image = _sections(volumes[i].astype(float), c)[0]
        amap = _sections(maps[i], c)
        vmax = max(float(amap[0].max()), float(amap[2].max())) or 1.0
        name = scan_names[i] if scan_names is not None else f"scan {i + 1}"
        axes[i, 0].imshow(image, cmap="gray", aspect="auto", interpolation="nearest")
        axes[i, 1].imshow(amap[0], cmap=MAP_CMAP, vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        axes[i, 2].imshow(amap[2], cmap=MAP_CMAP, vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        if mask is not None:
            for ax, sec in ((axes[i, 0], 0), (axes[i, 1], 0), (axes[i, 2], 2)):
                o = _sections(mask, c)[sec]
                if o.max() >= 0.5 > o.min():
                    ax.contour(o, levels=[0.5], colors=[OUTLINE_COLOR], linewidths=1.0)
        _axes_labels(axes[i, 0], "B-scan", c)
        _axes_labels(axes[i, 1], "B-scan", c)
        _axes_labels(axes[i, 2], "en-face", c)
        axes[i, 0].set_title(f"{name}: B-scan at Y = {c[1]}", fontsize="small")
        axes[i, 1].set_title("|attribution|, same B-scan", fontsize="small")
        axes[i, 2].set_title(f"|attribution| en-face at Z = {c[2]}", fontsize="small")
    fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig
