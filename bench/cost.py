"""Training cost, counted while an artifact is built (issue 15): transformer passes, samples, seconds.

Every transformer call goes through ``Backbone.velocity``, which reports its batch here
(:func:`count_forward`); a call whose output needs a gradient also hooks the output, so the
backward pass through the transformer is counted when autograd actually runs it -- a CFG
branch, a backward-simulation step or a frozen score is one forward per sample and no backward,
a generator or critic update one of each. The training loops say which effect each drawn
sample belongs to (:func:`count_samples`). Nothing is declared from a formula.

``ArtifactCache`` measures every build (:func:`measure`) and stores the figures with the
artifact (``cost.json``). Builds nest -- a student's build trains the teachers it needs -- and
each figure is *exclusive*: the counts and seconds of a nested build belong to it alone, so the
cost of a run is the sum over the artifacts it used, each once, shared ones included once.
Under torch.distributed every process counts its own passes (its shard of the batch) and
``ranks`` says how many shared the work.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COST_FILE = "cost.json"
# The row metrics a cost becomes (bench/runner.py) and their units; role "cost" keeps them out of
# the quality columns of every table (reports/tables.py reads them separately).
COST_METRICS: dict[str, str] = {"train_forward": "sample forward passes", "train_backward": "sample backward passes",
                                "train_wall_s": "s", "train_cpu_s": "CPU s"}
SAMPLES_METRIC = "train_samples"   # per effect ("general": the general edits)
COST_ROLE = "cost"


@dataclass
class Cost:
    forward: int = 0               # transformer forward passes, one per sample
    backward: int = 0              # backward passes through the transformer, one per sample
    wall_s: float = 0.0
    cpu_s: float = 0.0             # this process's CPU time, all threads
    samples: dict[str, int] = field(default_factory=dict)  # training samples drawn, per effect
    ranks: int = 1

    @property
    def passes(self) -> int:
        return self.forward + self.backward

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, artifact_dir: Path) -> "Cost | None":
        """The cost stored with an artifact, or None (built before costs were recorded)."""
        path = Path(artifact_dir) / COST_FILE
        if not path.is_file():
            return None
        d: dict[str, Any] = json.loads(path.read_text())
        return cls(**{k: d[k] for k in ("forward", "backward", "wall_s", "cpu_s", "samples", "ranks") if k in d})


class _Frame:
    """One build being measured: its own counts, and the seconds its nested builds took."""

    def __init__(self) -> None:
        self.forward = self.backward = 0
        self.samples: Counter[str] = Counter()
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.nested_wall = self.nested_cpu = 0.0

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0

    def cost(self, ranks: int = 1) -> Cost:
        wall, cpu = self.elapsed()
        return Cost(self.forward, self.backward, wall - self.nested_wall, cpu - self.nested_cpu,
                    dict(sorted(self.samples.items())), ranks)


_STACK: list[_Frame] = [_Frame()]  # the bottom frame counts what no build measures (evaluation)


def count_forward(batch: int, output: Any = None) -> None:
    """A transformer forward over ``batch`` samples; if ``output`` needs a gradient, its backward
    pass is counted when autograd runs it (in the frame that made the forward)."""
    frame = _STACK[-1]
    frame.forward += batch
    if output is not None and getattr(output, "requires_grad", False):
        def counted(grad):  # noqa: ANN001, ANN202 -- a tensor hook: leave the gradient as it is
            frame.backward += batch
            return grad

        output.register_hook(counted)


def count_samples(names: Iterable[str]) -> None:
    """Training samples drawn, one name (the sample's effect, or "general") per sample."""
    _STACK[-1].samples.update(names)


def so_far() -> Cost:
    """What the innermost build has cost up to now (a training snapshot's cost)."""
    return _STACK[-1].cost()


def carry(earlier: Cost) -> None:
    """Add what an earlier process spent on this build (a checkpoint it resumes from) to it."""
    frame = _STACK[-1]
    frame.forward += earlier.forward
    frame.backward += earlier.backward
    frame.samples.update(earlier.samples)
    frame.wall0 -= earlier.wall_s
    frame.cpu0 -= earlier.cpu_s


@contextmanager
def measure(ranks: int = 1) -> Iterator[list[Cost]]:
    """Measure a build: ``with measure() as out: ...``; ``out[0]`` is its exclusive cost after."""
    frame = _Frame()
    _STACK.append(frame)
    out: list[Cost] = []
    try:
        yield out
    finally:
        _STACK.pop()
        wall, cpu = frame.elapsed()
        parent = _STACK[-1]
        parent.nested_wall += wall
        parent.nested_cpu += cpu
        out.append(frame.cost(ranks))


def cost_records(used: dict[str, tuple[str, Path]]) -> list[dict[str, Any]]:
    """Tidy row fields (without a cell's identity) for the artifacts a run used, ``{"kind/key":
    (label, directory)}``: one row per cost metric and artifact, plus the samples per effect; an
    artifact built before costs were recorded gives rows with status ``missing``, not a guess."""
    out: list[dict[str, Any]] = []
    for artifact, (label, path) in used.items():
        cost = Cost.read(path)
        base = {"artifact": artifact, "role": COST_ROLE, "synthetic": False, "higher_is_better": False,
                "family": "", "category": "", "sample": 0, "draw": 0}
        if cost is None:
            for metric, unit in COST_METRICS.items():
                out.append({**base, "effect": "", "metric": metric, "value": float("nan"), "status": "missing",
                            "unit": unit, "note": f"{label}: built before training costs were recorded "
                                                  f"(delete {path} to rebuild and count it)"})
            continue
        values = {"train_forward": cost.forward, "train_backward": cost.backward, "train_wall_s": cost.wall_s,
                  "train_cpu_s": cost.cpu_s}
        for metric, unit in COST_METRICS.items():
            out.append({**base, "effect": "", "metric": metric, "value": float(values[metric]), "status": "ok",
                        "unit": unit, "note": label + (f" ({cost.ranks} ranks; this process's share)"
                                                       if cost.ranks > 1 else "")})
        for effect, n in cost.samples.items():
            out.append({**base, "effect": effect, "metric": SAMPLES_METRIC, "value": float(n), "status": "ok",
                        "unit": "samples", "note": label})
    return out


def stage_table(built: dict[str, tuple[str, Cost]], total_s: float) -> str:
    """Where a run's time went, by stage: each artifact kind built (or copied from the package)
    in this process, with its count and exclusive wall / CPU seconds, then the rest of the run
    (evaluation, loading, the report) as the total minus the builds. ``built``: ``{"kind/key":
    (how, cost)}`` as ``ArtifactCache.built`` holds it. Cached artifacts took no time here."""
    stages: dict[str, list[float]] = {}
    for artifact, (how, cost) in built.items():
        kind = artifact.split("/")[0] + (" (copied)" if how != "building" else "")
        n, wall, cpu = stages.get(kind, [0, 0.0, 0.0])
        stages[kind] = [n + 1, wall + cost.wall_s, cpu + cost.cpu_s]
    builds = sum(wall for _, wall, _ in stages.values())
    lines = ["time by stage (this process; artifacts found in the cache cost nothing here):",
             f"  {'stage':24s} {'built':>6s} {'wall s':>9s} {'CPU s':>9s}"]
    lines += [f"  {kind:24s} {int(n):6d} {wall:9.1f} {cpu:9.1f}" for kind, (n, wall, cpu) in stages.items()]
    lines.append(f"  {'evaluation and the rest':24s} {'':6s} {max(total_s - builds, 0.0):9.1f}")
    lines.append(f"  {'total':24s} {'':6s} {total_s:9.1f}")
    return "\n".join(lines)
