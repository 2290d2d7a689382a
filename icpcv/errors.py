"""Errors meant for users: printed as one sentence by the CLI, never as a traceback."""


class InputError(ValueError):
    """Bad user input (a table, a volume, an option). The message names file, row and column."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (locked, changed config, inconsistent)."""
