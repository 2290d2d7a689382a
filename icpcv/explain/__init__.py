"""icpcv.explain: where does a CNN look? Attribution maps and their score against known anatomy.

* :mod:`icpcv.explain.attribution` -- gradient, gradient x input, integrated gradients and
  occlusion for the CNNs (torch, batched, on the model's device), IOP held fixed; the maps of a
  fold's held-out scans in mmHg (:func:`~icpcv.explain.attribution.attribute_scans`) and their
  compact ``.npz`` (:class:`~icpcv.explain.attribution.AttributionMaps`);
* :mod:`icpcv.explain.scoring` -- absolute attribution per anatomical region of the phantom's
  label volumes, and the region-share statistic per model and method, each trained network against
  its randomised copy (the statistics are in :mod:`icpcv.stats.attribution`);
* :mod:`icpcv.explain.sanity` -- the model-randomisation check of Adebayo et al. (2018);
* :mod:`icpcv.explain.align` -- maps moved into the phantom's reference frame and averaged;
* :mod:`icpcv.explain.bench` -- the cost of each method per scan (``python -m icpcv.explain.bench``);
* :mod:`icpcv.explain.study` -- the whole thing on the phantom, leave-one-monkey-out, standalone
  until ``icpcv run --saliency N`` does it inside the folds (``python -m icpcv.explain.study``).

Nothing is imported here (torch is heavy; the scoring and statistics need none).
"""
