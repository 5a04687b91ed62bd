"""Method registry: base, lightning, fm_all_in_1, ours (CollectionLoRA) and more.

A method is: how it gets its adapters (trained or loaded, cached), how it edits an image
(steps, CFG, which adapters are active, which prompt) and what that costs (NFE, bytes).
Ablations are named boolean fields of the method's own ``Components`` dataclass.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from bench.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from pathlib import Path

    from bench.data.effectbench import EffectSpec
    from bench.workspace import Workspace


@dataclass
class EditOutput:
    images: torch.Tensor   # (B, 3, H, W) in [0, 1]
    nfe: int               # transformer forward passes per image, counted
    prompt: str            # the instruction the model was given
    sampler: str           # the sampler that produced the images (methods/flow.py: "euler", "renoise")


class Method(ABC):
    name: ClassVar[str]
    components_cls: ClassVar[type | None] = None   # a frozen dataclass of bool fields, or None

    def __init__(self, ws: "Workspace", components: Any = None) -> None:
        self.ws = ws
        self.components = components

    @abstractmethod
    def prepare(self, effects: "list[EffectSpec]") -> None:
        """Get every adapter this method needs for ``effects`` (train or load; cached)."""

    @abstractmethod
    def edit(self, effect: "EffectSpec", sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        """Apply ``effect`` to a batch of source images."""

    def adapter_bytes(self, effects: "list[EffectSpec]") -> int:
        """Bytes of adapter files needed to serve ``effects``."""
        return 0

    def sample_identity(self, effect: "EffectSpec") -> dict[str, Any] | None:
        """What this method's samples of ``effect`` are made from (after ``prepare``) when that is
        the effect's own adapters and settings alone, not the collection it is evaluated with:
        the evaluation then samples the effect once however many grids and N evaluate it
        (bench/evaluate.py). None (the default): its samples depend on the whole collection."""
        return None

    def artifacts(self) -> dict[str, Path]:
        """The LoRA directories this method serves with, by role (after ``prepare``): the cell
        directory links to them and their loss CSVs (``bench.store.ResultStore.write_artifacts``)."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")
METHODS.register("base", "methods.base:Base")
METHODS.register("lightning", "methods.lightning:BasePlusLightning", aliases=("base_lightning",))
METHODS.register("fm_all_in_1", "methods.fm_all_in_1:FMAllInOne", aliases=("fm",))
METHODS.register("ours", "methods.ours:CollectionLoRA", aliases=("collectionlora",))
METHODS.register("merge_linear", "methods.merge:MergeLinear")
METHODS.register("merge_ties", "methods.merge:MergeTies")
METHODS.register("merge_dare", "methods.merge:MergeDare")


def resolve_components(method: type[Method], off: tuple[str, ...]) -> Any:
    """The method's components with ``off`` switched off; unknown names fail with the valid list."""
    if method.components_cls is None:
        if off:
            raise UnknownNameError(f"method {method.name!r} has no components to ablate (got {', '.join(off)})")
        return None
    valid = [f.name for f in dataclasses.fields(method.components_cls)]
    for name in off:
        if name not in valid:
            raise UnknownNameError(f"unknown component {name!r} of method {method.name!r}; "
                                   f"valid components: {', '.join(valid)}")
    return method.components_cls(**{name: False for name in off})
