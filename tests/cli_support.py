"""The command line called in-process, as a user calls it: exit code, printed output, and any traceback.

``icpcv(*argv)`` is the only place the tests of issue 11 name the CLI's entry point (it becomes
``icpcv.commands.main`` with issue 12: one line to port).
"""
from __future__ import annotations

import contextlib
import csv
import io
import traceback

from icpcv.commands import main as _main


def icpcv(*argv) -> tuple[int, str, str]:
    """Run ``icpcv ARGV`` in this process; returns ``(exit code, stdout, stderr)``.

    An exception escaping the command is what a user sees as a traceback: it is printed to the
    returned stderr (with the word ``Traceback``) and the exit code is 1, as for ``python -m icpcv``.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = _main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors and --help
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - the point: whatever escapes is a traceback for the user
            traceback.print_exc()
            rc = 1
    return rc, out.getvalue(), err.getvalue()


def assert_clean_refusal(rc: int, err: str, *needles: str) -> None:
    """Exit code 2, one clear message, no traceback, and every needle in the message."""
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    for n in needles:
        assert n in err, (n, err)


def write_csv(path, header, rows):
    """A CSV table as a lab writes one: a header row, then ``rows`` as given; returns ``path``."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path
