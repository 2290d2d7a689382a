"""Places a command will write, checked before any work starts.

A run, an analysis, a comparison, a report or a prepared data set that can only fail at its
first write (after minutes of training, or half-way through its figures) is refused up front,
in one sentence saying what cannot be written and why: a file where a folder is needed, a
folder under a file, a read-only folder (a read-only file system, or no permission), a broken
symbolic link. Writability is probed by creating (and removing) an empty file, the only test
that holds for read-only mounts, ACLs and root alike; nothing is left behind, and a folder that
does not exist yet is not created by the check.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from icpcv.errors import InputError, UnwritableError
from icpcv.rundir import RunDir

_WHY = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def _probe(folder: Path) -> OSError | None:
    """Create and remove an empty file in ``folder``; the error if that is refused."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".icpcv-write-probe.", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass
    return None


def _why(exc: OSError) -> str:
    return _WHY.get(exc.errno, exc.strerror or type(exc).__name__)


def _not_writable(folder: Path, exc: OSError) -> str:
    return f"{folder} is read-only ({_why(exc)})" if exc.errno in _WHY else f"{folder} cannot be written ({_why(exc)})"


def _nearest_existing(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (or is a link, even a dangling one)."""
    p = path
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return p


def _dangling(path: Path) -> str | None:
    """What is wrong with a symbolic link that leads nowhere; None for anything else."""
    if not os.path.islink(path) or path.exists():
        return None
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop"
    return f"{path} is a broken symbolic link (to {os.readlink(path)})"


def _label(path: Path, option: str | None) -> str:
    return f"{option} {path}" if option else str(path)


def check_output_dir(path, *, what: str, option: str | None = "--out", create: bool = True,
                     subdirs: tuple[str, ...] = (), hint: str | None = None) -> Path:
    """Refuse, before any work, a folder that cannot be written; returns ``Path(path)``.

    ``what`` names the output in the message (``"run directory"``); ``option`` the command-line
    option that chose it (None: name the path alone). ``create``: the folder may be missing and
    will be created (then its nearest existing ancestor must be a writable folder); otherwise
    it must exist. ``subdirs``: existing subfolders that will be written too (``figures``).
    ``hint``: what to do, appended to the message (default: choose another ``option``).
    Raises :class:`~icpcv.errors.UnwritableError` (a RunDirError: exit code 2).
    """
    path = Path(path)
    todo = hint or (f"choose another {option}" if option else "choose another place")
    _check_folder(path, _label(path, option), what, todo, create, subdirs)
    return path


def check_output_file(path, *, what: str, option: str | None = "--out") -> Path:
    """Refuse, before any work, a file that cannot be written: a folder in its place, a read-only
    file to append to, or a folder that cannot be written or created; returns ``Path(path)``."""
    path = Path(path)
    label, todo = _label(path, option), f"choose another {option}" if option else "choose another place"
    if path.is_dir():
        raise UnwritableError(f"{label}: cannot write the {what} there: {path} is a folder, not a file; {todo}")
    if path.is_file() and not os.access(path, os.W_OK):
        raise UnwritableError(f"{label}: cannot write the {what} there: {path} is read-only (permission denied); "
                              f"{todo}")
    _check_folder(path.parent, label, what, todo, True, ())
    return path


def _check_folder(path: Path, label: str, what: str, todo: str, create: bool, subdirs) -> None:
    def refuse(why: str):
        raise UnwritableError(f"{label}: cannot write the {what} there: {why}; {todo}")

    if _dangling(path):
        refuse(_dangling(path))
    if path.exists():
        if not path.is_dir():
            refuse(f"{path} is a file, not a folder")
        for folder in [path] + [path / s for s in subdirs if (path / s).is_dir()]:
            exc = _probe(folder)
            if exc is not None:
                refuse(_not_writable(folder, exc))
        return
    if not create:
        refuse(f"no such folder {path}")
    anc = _nearest_existing(path)
    if _dangling(anc):
        refuse(_dangling(anc))
    if not anc.is_dir():
        refuse(f"{anc} is a file, not a folder")
    exc = _probe(anc)
    if exc is not None:
        refuse(_not_writable(anc, exc))


def check_run_outputs(out, log_file=None, *, option: str | None = "--out") -> None:
    """``icpcv run``: its run directory and its ``--log-file``, before any work."""
    check_output_dir(out, what="run directory", option=option)
    if log_file:
        check_output_file(log_file, what="log file", option="--log-file")


def check_report_dir(run_dir) -> None:
    """``icpcv report RUN_DIR``: it writes ``index.html`` and ``figures/`` into the existing folder.
    Anything but an existing folder is left to the report's own message (what RUN_DIR should be)."""
    if Path(run_dir).is_dir():
        check_output_dir(run_dir, what="report", option=None, subdirs=("figures",),
                         hint="copy the folder somewhere writable and run `icpcv report` on the copy")


#: what a run (or analysis, comparison) directory's commands write into it: RunDir's files and folders
RUN_DIR_WRITES = tuple(RunDir.FILES.values()) + ("folds", "cohort", "scan_split", "figures", ".lock")


def _same_or_inside(path: Path, target: Path) -> bool:
    if path == target or target in path.parents:
        return True
    try:
        return path.exists() and target.exists() and os.path.samefile(path, target)  # a hard link
    except OSError:
        return False


def check_inputs_kept(out, inputs, *, writes=RUN_DIR_WRITES, everything: bool = False, keep=(),
                      option: str | None = "--out") -> None:
    """Refuse, before any work, an output folder whose writing would replace one of the user's
    ``inputs`` (tables, raw files, folders of them): an input that is (or lies inside) one of the
    names ``writes`` relative to ``out``, or, with ``everything`` (``run --fresh`` empties the
    folder), anywhere inside ``out``. Paths are compared resolved (symbolic links followed, hard
    links recognised). ``keep``: inputs the command reads and does not rewrite (analyze's own
    ``predictions.csv``). Raises :class:`~icpcv.errors.InputError` naming the input and the file."""
    def resolved(path) -> Path:  # os.path.realpath, unlike Path.resolve, does not raise on a symbolic link loop
        return Path(os.path.realpath(path))

    out_r = resolved(out)
    kept = {resolved(k) for k in keep if k}
    for given in inputs:
        if not given:
            continue
        p = resolved(given)
        if p in kept:
            continue
        if everything and (p == out_r or out_r in p.parents):
            raise InputError(f"{_label(Path(out), option)}: the input {given} lies inside it, and this command empties "
                             f"the folder first; choose another {option or 'place'} (or move the input out)")
        for name in writes:
            target = out_r / name
            if _same_or_inside(p, target):
                raise InputError(f"{_label(Path(out), option)}: writing {target} would replace the input {given}; "
                                 f"choose another {option or 'place'} (or move the input out)")
