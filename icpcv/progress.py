"""Progress over folds and epochs: a live line on a terminal, plain lines in logs, or nothing.

Modes: ``bar`` (a terminal: one line rewritten in place with a bar over folds and the current
epoch and loss), ``lines`` (not a terminal, e.g. a batch job's log: lasting lines only), and
``quiet`` (nothing on the terminal). ``log_file`` appends the lasting lines to a file in every
mode. Fold jobs report through a :class:`FoldReporter`, which also keeps ``fold.log`` and
``status.json`` in the fold's folder, so executors that run folds in other processes (or on
other machines) can show what each fold is doing by reading the run directory.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from datetime import datetime

from icpcv.rundir import FoldDir


class Progress:
    def __init__(self, mode: str = "auto", log_file=None, stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode not in ("bar", "lines", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode  # bar | lines | quiet
        self.log = open(log_file, "a", encoding="utf-8") if log_file else None
        self.t0 = time.perf_counter()
        self._last_len = 0
        self._lock = threading.RLock()
        self.folds_done: int | None = None
        self.folds_total: int | None = None

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"

    def set_folds(self, done: int, total: int) -> None:
        """The bar over folds shown in front of every transient status."""
        self.folds_done, self.folds_total = done, total

    def update(self, text: str) -> None:
        """A transient status (overwritten on a terminal; not written in 'lines' or 'quiet' mode)."""
        if self.mode != "bar":
            return
        with self._lock:
            bar = "" if self.folds_total is None else self.bar(self.folds_done or 0, self.folds_total) + " folds | "
            line = f"[{self._elapsed()}] {bar}{text}"
            try:
                width = os.get_terminal_size(self.stream.fileno()).columns - 1
            except (AttributeError, OSError, ValueError):  # not a terminal
                width = 0
            width = width if width >= 40 else 240  # unknown size (0 x 0 pseudo-terminals)
            line = line[:width]
            pad = max(0, self._last_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
            self._last_len = len(line)

    def message(self, text: str) -> None:
        """A lasting line."""
        with self._lock:
            line = f"[{self._elapsed()}] {text}"
            if self.log:
                self.log.write(f"{datetime.now().isoformat(timespec='seconds')} {text}\n")
                self.log.flush()
            if self.mode == "quiet":
                return
            if self.mode == "bar" and self._last_len:
                self.stream.write("\r" + " " * self._last_len + "\r")
                self._last_len = 0
            self.stream.write(line + "\n")
            self.stream.flush()

    @staticmethod
    def bar(done: int, total: int, width: int = 20) -> str:
        filled = int(width * done / max(total, 1))
        return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"

    def close(self) -> None:
        with self._lock:
            if self.mode == "bar" and self._last_len:
                self.stream.write("\n")
                self.stream.flush()
                self._last_len = 0
            if self.log:
                self.log.close()
                self.log = None


class FoldReporter:
    """What a fold job reports to: the fold's ``fold.log`` and ``status.json``, and optionally a Progress.

    ``status.json`` (the latest transient line) is rewritten at most every ``every`` seconds.
    """

    def __init__(self, fold: FoldDir, parent: Progress | None = None, every: float = 0.5):
        self.fold, self.parent, self.every = fold, parent, every
        self.log_path = fold.log
        self._last = 0.0

    def update(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.fold.write_status(text)
        if self.parent:
            self.parent.update(text)

    def message(self, text: str) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(f"{datetime.now().isoformat(timespec='seconds')} {text}\n")
        except OSError:  # a full disk must not hide the real error
            pass
        self.fold.write_status(text)
        if self.parent:
            self.parent.message(text)
