"""Exceptions raised by :mod:`icpcv.stats`.

``InputError`` lives here for now; the project-wide ``icpcv.errors.InputError``
can re-export (or replace) it later without changing callers that catch
``ValueError``.
"""


class InputError(ValueError):
    """Bad user input (a predictions file that cannot be analysed).

    The message always names the file and, where it applies, the row and the
    column, e.g. ``predictions.csv row 17, column y_pred: 'abc' is not a number``.
    Rows are *1-based data rows*: the header line is not counted, so row 1 is
    the first line after the header (line 2 of the file, row 2 in a
    spreadsheet that shows the header as row 1).
    """
