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
* :mod:`icpcv.explain.fold` -- inside a run's fold job (``icpcv run --saliency N``): up to N held-out
  scans per monkey mapped by each fitted network, its randomised copy and the sanity check, saved
  in the fold's folder before its record;
* :mod:`icpcv.explain.summary` -- after the folds: ``attribution.json`` (region shares with
  monkey-level intervals, sanity check, cost) and ``attribution_maps.npz`` (mean maps for the report);
* :mod:`icpcv.explain.study` -- :func:`~icpcv.explain.study.fit_cnn`: one fold's network fitted as the run
  fits it, without a run directory (the study itself is ``icpcv run --saliency N``; its driver is
  ``python -m icpcv.run.attribution_study``).

Nothing is imported here (torch is heavy; the scoring and statistics need none).
"""
