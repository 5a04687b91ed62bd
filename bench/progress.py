"""Progress where the output goes: a tqdm bar in a terminal, a plain line at a fixed interval
in a log (SLURM logs, CI, ``nohup``), where a bar is either hidden or a smear of carriage returns.

    BENCH_PROGRESS_EVERY=60   seconds between log lines (default 60; 0: no log lines)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.std import tqdm

LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f} %), {elapsed} elapsed, ETA {remaining}, {rate_fmt}{postfix}"


class _LogLines(tqdm):
    """tqdm's counting, rate and ETA, written as one full line at most every ``mininterval``
    seconds (``set_postfix`` refreshes would otherwise print a line per step), and at the end."""

    _last_line = float("-inf")
    _closing = False

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # noqa: ARG002
        now = time.monotonic()
        if self._closing or now - self._last_line >= self.mininterval:
            self._last_line = now
            self.fp.write((msg if msg is not None else self.__str__()) + "\n")
            self.fp.flush()
        return True

    def close(self) -> None:
        self._closing = True
        super().close()


class _Lines:
    """The log stream as tqdm sees it: whole lines pass, the bare '\\n' / '\\r' tqdm writes
    around a terminal bar do not (they would leave blank lines in the log)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip("\r\n"):
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def log_interval() -> float:
    return float(os.environ.get("BENCH_PROGRESS_EVERY", "60") or 0)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             initial: int = 0, stream: Any = None) -> tqdm:
    """A progress bar (terminal) or a progress logger (anything else); same tqdm interface."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, file=stream)
    every = log_interval()
    return _LogLines(iterable, total=total, desc=desc, initial=initial, file=_Lines(stream), disable=every <= 0,
                     mininterval=every, maxinterval=max(every, 1.0), bar_format=LOG_FORMAT, leave=True)
