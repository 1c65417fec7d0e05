"""The error policy of every tool: a user error is one line on stderr and exit code 2.

Usage (one decorator on the tool's ``main``; the launcher ``tools/<name>.py`` and the console
script ``dermseg-<name>`` both call that ``main``)::

    from segmentation.cli.errors import cli_main

    @cli_main
    def main(argv: list[str] | None = None) -> int:
        ...  # raise ConfigError / DataError / CheckpointError / FileNotFoundError; no try/except
        return 0

What counts as a user error (:data:`USER_ERRORS`): the :class:`~segmentation.errors.UserError`
family (``ConfigError``, ``DataError``, ``CheckpointError``, ``NonFiniteError``; import them from
:mod:`segmentation.errors`, or ``ConfigError`` from :mod:`segmentation.config`) and ``OSError``
(missing file, existing output, permissions, full disk). The tool prints ``error: <message>`` on
one line to stderr and returns 2. Anything else is a bug and keeps its traceback. With
``DERMSEG_DEBUG=1`` in the environment user errors are re-raised too, traceback included.
A tool that needs another exit code for a specific outcome (``tools/export.py``: 1 for a parity
failure) catches that one exception itself.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable

from segmentation.errors import UserError

__all__ = ["USER_ERRORS", "EXIT_USER_ERROR", "cli_main", "describe"]

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)
EXIT_USER_ERROR = 2
# "ValueError: image '...' could not be decoded" -> the message without the class name
_LAST_LINE = re.compile(r"^(?:[\w.]+(?:Error|Exception)): (.*)$")


def describe(err: BaseException) -> str:
    """The one-line message of ``err``.

    An exception re-raised by a DataLoader worker carries the worker's whole traceback in its
    message; its last line (the original message) is used. ``KeyError`` quotes are dropped, and
    any remaining line breaks become spaces.
    """
    text = err.args[0] if len(err.args) == 1 and isinstance(err.args[0], str) else str(err)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
        match = _LAST_LINE.match(last)
        text = match.group(1) if match else last
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: '{err.filename}'"
    return " ".join(text.split())


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a tool's ``main(argv) -> exit code`` with the policy above."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("DERMSEG_DEBUG", "") not in ("", "0"):
                raise
            print(f"error: {describe(err)}", file=sys.stderr)
            return EXIT_USER_ERROR

    return wrapper
