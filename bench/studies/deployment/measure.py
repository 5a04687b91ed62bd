"""What every deployment measurement uses: the tidy rows it adds to, wall time, peak memory."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class DeploymentRows:
    ident: dict[str, Any]
    records: list[dict]

    def add(self, method: str, metric: str, values: Sequence[float] | float, *, higher: bool, note: str = "",
            router: str = "", status: str = "ok", effects: Sequence[str] | None = None) -> None:
        values = [values] if isinstance(values, (int, float)) else list(values)
        for i, v in enumerate(values):
            self.records.append({**self.ident, "method": method, "metric": metric, "value": float(v),
                                 "status": status, "note": note, "router": router, "higher_is_better": higher,
                                 "sample": i, "effect": effects[i] if effects else ""})


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.002) -> None:
        self.device, self.interval_s = str(device), interval_s
        self.peak = 0
        self.kind = "cuda_max_memory_allocated" if self.device.startswith("cuda") else "process_peak_rss"

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.kind.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._stop = threading.Event()
        self.peak = self.rss()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.peak = max(self.peak, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.kind.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """Wall time of ``fn()`` (CUDA-synchronised on GPU) and its result."""
    sync = None
    if str(device).startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
        sync()
    t0 = time.perf_counter()
    result = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, result
