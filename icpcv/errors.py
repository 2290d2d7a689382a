"""Errors meant for users: printed as one sentence by the CLI, never as a traceback."""


class InputError(ValueError):
    """Bad user input (a table, a volume, an option). The message names file, row and column."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (locked, changed config, inconsistent)."""


class UnwritableError(RunDirError):
    """A place a command must write (an output folder or file) cannot be written: said before any work starts."""


class DiskFullError(RunDirError):
    """A write failed because the disk (or quota) is full; nothing was left half-written."""


class FoldsFailed(RunDirError):
    """Some folds failed; ``failures`` lists them (fold, reason, log path). Complete folds are kept."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures
