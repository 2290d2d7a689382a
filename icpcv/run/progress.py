"""Progress over folds and epochs: a live line on a terminal, plain lines in logs, or nothing."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, mode: str = "auto", log_file=None, stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode  # bar | lines | quiet
        self.log = open(log_file, "a", encoding="utf-8") if log_file else None
        self.t0 = time.perf_counter()
        self._last_len = 0

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def update(self, text: str) -> None:
        """A transient status (overwritten on a terminal; not written in 'lines' mode)."""
        if self.mode == "bar":
            line = f"[{self._elapsed()}] {text}"
            pad = max(0, self._last_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
            self._last_len = len(line)

    def message(self, text: str) -> None:
        """A lasting line."""
        line = f"[{self._elapsed()}] {text}"
        if self.log:
            self.log.write(line + "\n")
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
        if self.log:
            self.log.close()
            self.log = None
