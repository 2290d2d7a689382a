"""Geometry of a raw source before resampling: a declared axis layout, the field-of-view crop.

``prepare`` streams a volume slab by slab (:mod:`icpcv.prepare.sources`), so the crop of
:func:`icpcv.cohort.geometry.crop_box` is applied to each slab as it arrives: the in-plane axes
are sliced, and slabs outside the box along the stream axis are dropped. The declared layout
(``--axes``) only relabels which (X, Y, Z) axis each stored axis holds; no voxel moves.
"""
from __future__ import annotations

from icpcv.cohort import geometry


class Layout:
    """A source seen through a declared axis layout: ``shape``, ``native_axes`` and ``spacing_mm`` in
    true (X, Y, Z); ``slabs()`` are the source's own (their native layout is what ``native_axes`` says)."""

    def __init__(self, src, axes: str | None):
        self.src = src
        a = geometry.parse_axes(axes) if axes else "XYZ"
        where = ["XYZ".index(c) for c in a]  # the reader's slot s holds the true axis where[s]
        shape, spacing = [0, 0, 0], [None, None, None]
        for s, t in enumerate(where):
            shape[t] = src.shape[s]
            if src.spacing_mm is not None:
                spacing[t] = src.spacing_mm[s]
        self.shape = tuple(shape)
        self.native_axes = tuple(where[i] for i in src.native_axes)
        self.stream = src.stream
        self.spacing_mm = tuple(spacing) if src.spacing_mm is not None else None
        self.axes = a
        if a != "XYZ":
            src.notes.append(f"axes declared as {a} (--axes)")

    def slabs(self):
        return self.src.slabs()


def relabel(src, axes: str | None) -> Layout:
    """The source with its axes declared as ``axes`` (e.g. ``'ZYX'``: what the reader returns as X
    holds depth); no voxel moves."""
    return Layout(src, axes)


def cropped_slabs(src, box):
    """``(shape, slabs)``: the source's shape inside ``box`` (slices along X, Y, Z) and its slabs cut
    to the box, with starts counted from the box's start."""
    shape = tuple(b.stop - b.start for b in box)
    stream_axis = src.native_axes[src.stream]
    lo, hi = box[stream_axis].start, box[stream_axis].stop

    def gen():
        for start, slab in src.slabs():
            k = slab.shape[src.stream]
            a, b = max(lo, start), min(hi, start + k)
            if a >= b:
                continue
            index = []
            for i in range(3):
                if i == src.stream:
                    index.append(slice(a - start, b - start))
                else:
                    index.append(box[src.native_axes[i]])
            yield a - lo, slab[tuple(index)]

    return shape, gen()
