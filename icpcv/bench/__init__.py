"""Benchmarks that cross rooms (``icpcv bench ...``): each prints its figure beside a yardstick
measured in the same run; none of them is a test.

* :mod:`icpcv.bench.train`: training throughput, step only vs the real data path vs a seed-style loop;
* :mod:`icpcv.bench.run`: wall time of the default run against the 5-minute budget.

The statistics' and prepare's own benchmarks live in their rooms (``icpcv.stats.bench``,
``icpcv.prepare.bench``).
"""
