"""icpcv.explain: where does a CNN look? Attribution maps and their score against known anatomy.

* :mod:`icpcv.explain.attribution` -- gradient, gradient x input, integrated gradients and
  occlusion for the CNNs (torch, batched, on the model's device), IOP held fixed;
* :mod:`icpcv.explain.scoring` -- absolute attribution per anatomical region of the phantom's
  label volumes, and the region-share statistic per model and method
  (:func:`icpcv.stats.attribution.region_share` does the monkey-level statistics);
* :mod:`icpcv.explain.sanity` -- the model-randomisation check of Adebayo et al. (2018);
* :mod:`icpcv.explain.align` -- maps moved into the phantom's reference frame and averaged;
* :mod:`icpcv.explain.bench` -- the cost of each method per scan.

Nothing here is imported by this package's ``__init__`` (torch is heavy; the statistics need none).
"""
