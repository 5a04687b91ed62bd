"""Errors a user causes and can fix, and how the CLI shows them.

``python -m bench.run`` prints a :class:`BenchError` (and the ``ValueError`` / ``OSError`` of
bad values and files) as one ``error:`` line -- plus the list of problems where there are several
-- and exits non-zero (2 for a bad command line or config value, 1 otherwise); ``--debug`` shows
the traceback. Anything else that escapes is a bug of the harness and keeps its traceback.
Concrete errors subclass :class:`BenchError` next to the builtin they are (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` callers keep working.
"""

from __future__ import annotations

from collections.abc import Sequence


class BenchError(Exception):
    """A known error: bad input, a missing file or weight, a value that makes no sense, a NaN;
    the message names the file (and tensor, line, key) at fault."""


class NonFiniteError(BenchError, ValueError):
    """Weights or outputs holding NaN/inf: refused where an adapter enters a run and before an
    artifact is marked finished, so they never poison a cache or get blamed on a later step."""


class MissingInputsError(BenchError):
    """Everything a run needs and does not have, found before any work starts (dataset,
    backbone weights, teacher LoRAs), each with how to obtain it."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} inputs of this run are missing:\n" + "\n".join(f"  - {p}" for p in self.problems)


KNOWN_ERRORS: tuple[type[BaseException], ...] = (BenchError, ValueError, OSError)
