"""The one exception type for problems the user can fix: bad input, a bad destination, a full disk.

Engine code raises :class:`LmforgeError` with a message that names the file (or flag) and what is
wrong with it; the ``lmforge`` command prints that message as one line and exits with status 2
(see ``lmforge.cli.run``). Anything else that escapes a command is reported the same way, with its
type, so a user never sees a traceback unless ``LMFORGE_DEBUG=1`` asks for one.
"""

from __future__ import annotations


class LmforgeError(Exception):
    """A problem with the input, the output or the environment, told in one line."""


class OutputError(LmforgeError):
    """The destination cannot be written without destroying something lmforge did not make."""


class InputError(LmforgeError, ValueError):
    """An input file that is not what the stage reads (wrong type, empty, wrong schema); also a
    ValueError, for callers that caught that before."""


class MissingInputError(LmforgeError, FileNotFoundError):
    """An input that is not there (also a FileNotFoundError, for callers that skip what is missing)."""
