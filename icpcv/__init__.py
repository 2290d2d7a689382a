"""icpcv: do OCT scans plus IOP really predict ICP? Monkey-level cross-validation."""

__version__ = "0.1.0"


def analyze(*args, **kwargs):
    """Monkey-level analysis of out-of-fold predictions; see :func:`icpcv.stats.analyze`."""
    from icpcv.stats import analyze as _analyze  # lazy: start-up time (`import icpcv` loads no pandas or scipy)

    return _analyze(*args, **kwargs)


__all__ = ["analyze", "__version__"]
