"""The exception type of bad input: a file, a value or a weight the user can fix.

``python -m bench.run`` prints an ``InputError`` as one ``error:`` line and exits 2, as it does for
an unknown name; any other exception is a bug and keeps its traceback. Concrete errors subclass it
next to the builtin they are (``ValueError``, ``FileNotFoundError``), so ``except ValueError``
callers keep working.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input the user can fix; the message names the file (and tensor, line, key) at fault."""


class NonFiniteError(InputError, ValueError):
    """Weights or outputs holding NaN/inf: refused where an adapter enters a run and before an
    artifact is marked finished, so they never poison a cache or get blamed on a later step."""
