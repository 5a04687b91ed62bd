"""EffectBench's errors: bad data, reported with file and line, every problem at once."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from bench.errors import BenchError

#: at most this many problems are spelled out in one error message (all are
#: counted, and all are available in ``EffectBenchError.problems``).
MAX_REPORTED_PROBLEMS = 50


class EffectBenchError(BenchError, ValueError):
    """Bad EffectBench data.

    The message starts with ``path:line: `` when a row is at fault and with
    ``path: `` for file-level problems.  When several problems were found they
    are listed one per line (the first line is the first problem), followed by a
    summary line with the count.  ``problems`` holds every problem string.
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) if problems is not None else (message,)

    @classmethod
    def from_problems(
        cls, problems: Sequence[str], where: str | None = None, limit: int = MAX_REPORTED_PROBLEMS
    ) -> "EffectBenchError":
        problems = list(problems)
        if not problems:
            raise ValueError("from_problems() needs at least one problem")
        if len(problems) == 1:
            return cls(problems[0], problems)
        lines = problems[:limit]
        if len(problems) > limit:
            lines.append(f"... and {len(problems) - limit} more problem(s) not shown")
        suffix = f" in {where}" if where else ""
        lines.append(f"{len(problems)} problems found{suffix}; fix them all and reload")
        return cls("\n".join(lines), problems)

    def __str__(self) -> str:  # never repr-quoted (matters for the KeyError subclass)
        return str(self.args[0]) if self.args else ""


class UnknownEffectError(EffectBenchError, KeyError):
    """An effect name that the dataset does not define (both a ValueError and a KeyError)."""


def suggest(name: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid names, else ``""``."""
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def unknown_effect_message(name: Any, valid: Sequence[str], where: str) -> str:
    """The message of an unknown effect name: where, the closest names, the valid ones."""
    shown = ", ".join(repr(v) for v in valid[:8])
    more = f", ... ({len(valid)} in total)" if len(valid) > 8 else ""
    return f"unknown effect {name!r} in {where}{suggest(str(name), valid)}; valid names: {shown}{more}"
