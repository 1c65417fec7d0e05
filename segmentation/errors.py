"""The user-error family: bad input that the user fixes, as opposed to a bug in dermseg.

Every class also derives from the built-in exception that code catching it already expects
(``ConfigError`` is a ``ValueError``, ``CheckpointError`` a ``RuntimeError``...), so raising the
more precise class changes no existing ``except`` clause. The tools turn any :class:`UserError`
into one ``error: ...`` line and exit code 2 (:mod:`segmentation.cli.errors`); the message must
therefore say what was expected, what came, and how to fix it, naming the file, key or value.
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "NonFiniteError",
    "RunStopped",
]


class UserError(Exception):
    """Base of every error caused by the user's input (config, data, checkpoint, run state)."""


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


class DataError(UserError, ValueError):
    """A data file or folder is unusable (unreadable, wrong size, wrong values, empty)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is unreadable, not a dermseg checkpoint, or does not fit the run."""


class NonFiniteError(UserError, FloatingPointError):
    """Training stopped on a non-finite loss or gradient (``train.nonfinite`` policy)."""


class RunStopped(Exception):
    """A training run stopped early on a signal, after writing a resumable checkpoint.

    Not a user error: the tool prints the message (which says how to resume) and exits with
    ``128 + signal number``, as a shell reports a process ended by that signal.

    Attributes:
        reason: the signal's name (``"SIGTERM"``, ``"SIGINT"``), or ``"signal on another rank"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
