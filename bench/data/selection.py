"""Sub-benchmarks: the first N effects of an EffectBench, or the named ones.

A run uses the first ``n_effects`` effects of its dataset (``Workspace.bench``); studies pick
effects by name. Either way the result is an EffectBench of the same root, so keys, images and
caches are shared with the full dataset.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

from bench.data.errors import EffectBenchError, UnknownEffectError, unknown_effect_message


def select(bench: Any, n_effects: int | None = None, names: Sequence[str] | None = None) -> Any:
    """Sub-benchmark with the first ``n_effects`` effects (file order) or the named ones.

    The result keeps file order, the selected effects' train / lora-specific
    test rows / templates, generic test rows whose data_type matches a kept
    effect, and all general rows.  With neither argument, returns ``bench``.
    """
    if n_effects is not None and names is not None:
        raise EffectBenchError("select(): give n_effects or names, not both")
    if n_effects is None and names is None:
        return bench
    if n_effects is not None:
        if isinstance(n_effects, bool):
            raise EffectBenchError(f"select(): n_effects must be an int, got {n_effects!r}")
        try:
            n = operator.index(n_effects)
        except TypeError:
            raise EffectBenchError(f"select(): n_effects must be an int, got {n_effects!r}") from None
        if n < 1:
            raise EffectBenchError(f"select(): n_effects must be >= 1, got {n}")
        if n > len(bench.effects):
            raise EffectBenchError(f"select(): asked for {n} effects but {bench.root} has only {len(bench.effects)}")
        keep = bench.effects[:n]
    else:
        wanted_list = [names] if isinstance(names, str) else list(names)  # type: ignore[arg-type]
        if not wanted_list:
            raise EffectBenchError("select(): names is empty")
        problems = []
        seen: set[str] = set()
        valid = set(bench.names)
        for nm in wanted_list:
            if not isinstance(nm, str) or nm not in valid:
                problems.append(unknown_effect_message(nm, bench.names, str(bench.root)))
            elif nm in seen:
                problems.append(f"select(): effect {nm!r} given twice")
            else:
                seen.add(nm)
        if problems:
            err = EffectBenchError.from_problems(problems, "select()")
            raise UnknownEffectError(str(err), err.problems)
        keep = tuple(e for e in bench.effects if e.lora_name in seen)
    kept = {e.lora_name for e in keep}
    kept_types = {e.data_type for e in keep}
    return dataclasses.replace(
        bench,
        effects=keep,
        train=tuple(r for r in bench.train if r.lora_name in kept),
        general=bench.general,
        test=tuple(
            r
            for r in bench.test
            if (r.lora_name in kept if r.lora_name is not None else r.data_type in kept_types)
        ),
        templates=tuple(t for t in bench.templates if t.lora_name in kept),
        meta=dict(bench.meta),
    )
