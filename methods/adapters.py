"""Several LoRA adapters on one frozen base: the student, the critic and the teacher bank.

One base with adapters needs about a third of the memory of the reference code's three full
model copies (generator, real, fake). Two things here differ from calling peft/diffusers
directly, each on purpose:

* **Loading is validated.** A teacher whose keys name modules the backbone does not have, whose
  rank differs from the bank's, or whose target modules differ, is an error naming the LoRA
  and the file. (The reference bank silently keeps the previous teacher when a name is missing
  and skips shape mismatches; that corrupts a run without a trace.)
* **Switching is direct.** ``transformer.set_adapters`` walks every LoRA layer and toggles
  ``requires_grad`` on every loaded adapter: ~50 ms with 50 adapters on the tiny model, and the
  DMD loop switches about five times per step. ``activate`` only sets the active adapter list
  of each LoRA layer (peft's ``BaseTunerLayer._active_adapter``), ~0.1 ms; trainability is set
  once at creation instead. ``tests/test_adapters.py`` checks both give identical outputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import QwenImagePipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from bench.errors import BenchError
from methods.lora import WEIGHT_NAME, load_lora

_KEY = re.compile(r"^(?:transformer\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


class LoraMismatchError(BenchError, ValueError):
    """A LoRA that does not fit the backbone or the bank."""


class AdapterBank:
    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.frozen: dict[str, Path] = {}   # teacher name -> file
        self.rank: int | None = None
        self.targets: frozenset[str] | None = None
        self._module_names = {name for name, _ in transformer.named_modules()}

    # -- loading ----------------------------------------------------------------------------------
    def add_teacher(self, name: str, path: str | Path) -> None:
        """Load a frozen teacher LoRA as adapter ``name`` after checking it fits."""
        if name in self.frozen:
            raise ValueError(f"teacher {name!r} is already in the bank ({self.frozen[name]})")
        path = Path(path)
        file = path / WEIGHT_NAME if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"teacher LoRA {name!r}: no weights at {file}")
        rank, targets = self._inspect(name, file)
        if self.rank is not None and rank != self.rank:
            raise LoraMismatchError(f"teacher LoRA {name!r} ({file}) has rank {rank}, the bank's teachers "
                                    f"have rank {self.rank}")
        if self.targets is not None and targets != self.targets:
            extra, missing = sorted(targets - self.targets), sorted(self.targets - targets)
            raise LoraMismatchError(f"teacher LoRA {name!r} ({file}) targets other modules than the bank's "
                                    f"teachers (extra: {extra}, missing: {missing})")
        self.rank, self.targets = rank, targets
        load_lora(self.transformer, file, name)
        self.frozen[name] = file
        self._mark_trainable()

    def _inspect(self, name: str, file: Path) -> tuple[int, frozenset[str]]:
        state = QwenImagePipeline.lora_state_dict(str(file))
        ranks, targets, unknown = set(), set(), []
        for key, tensor in state.items():
            m = _KEY.match(key)
            if m is None:
                raise LoraMismatchError(f"teacher LoRA {name!r} ({file}): unrecognised key {key!r}")
            module = m["module"]
            if module not in self._module_names:
                unknown.append(module)
                continue
            if m["ab"] == "A":
                ranks.add(tensor.shape[0])
            targets.add(module.split(".", 2)[-1] if module.startswith("transformer_blocks.") else module)
        if unknown:
            raise LoraMismatchError(f"teacher LoRA {name!r} ({file}) names {len(unknown)} module(s) this "
                                    f"backbone does not have, e.g. {unknown[0]!r}: it was trained for "
                                    "another model")
        if len(ranks) != 1:
            raise LoraMismatchError(f"teacher LoRA {name!r} ({file}) has mixed ranks {sorted(ranks)}")
        return ranks.pop(), frozenset(targets)

    def add_trainable(self, name: str, config) -> list[torch.nn.Parameter]:
        """Add a fresh trainable LoRA (student or critic); returns its parameters.

        peft re-marks trainability whenever an adapter is injected, so every call re-asserts the
        bank's invariant: teachers frozen, trainable adapters trainable, base frozen.
        """
        self.transformer.add_adapter(config, adapter_name=name)
        self.trainable = getattr(self, "trainable", []) + [name]
        self._mark_trainable()
        return [p for pname, p in self.transformer.named_parameters() if f".{name}." in pname]

    def _mark_trainable(self) -> None:
        for pname, p in self.transformer.named_parameters():
            p.requires_grad_(any(f".{n}." in pname for n in getattr(self, "trainable", [])))

    # -- switching ----------------------------------------------------------------------------------
    def _layers(self) -> list[BaseTunerLayer]:
        return [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]

    def activate(self, *names: str) -> None:
        """Make exactly ``names`` active (none: the plain base). Unknown names raise."""
        layers = self._cached_layers()
        if names:
            loaded = set(self.transformer.peft_config)
            for name in names:
                if name not in loaded:
                    raise KeyError(f"adapter {name!r} is not loaded; loaded: {', '.join(sorted(loaded))}")
        for layer in layers:
            layer._active_adapter = list(names)

    @contextmanager
    def active(self, *names: str) -> Iterator[None]:
        before = self.current()
        self.activate(*names)
        try:
            yield
        finally:
            self.activate(*before)

    def current(self) -> tuple[str, ...]:
        layers = self._cached_layers()
        return tuple(layers[0]._active_adapter) if layers else ()

    def _cached_layers(self) -> list[BaseTunerLayer]:
        count = len(self.transformer.peft_config) if hasattr(self.transformer, "peft_config") else 0
        if getattr(self, "_layer_cache_key", None) != count:
            self._layer_cache = self._layers()
            self._layer_cache_key = count
        return self._layer_cache
