"""Exceptions raised by :mod:`icpcv.stats`: the project-wide ones.

Messages name the file and, where it applies, the row and the column, e.g.
``predictions.csv row 17, column y_pred: 'abc' is not a number``. Rows are 1-based data rows:
row 1 is the first line after the header.
"""
from icpcv.errors import InputError

__all__ = ["InputError"]
