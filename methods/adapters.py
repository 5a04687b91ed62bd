"""Several LoRA adapters on one frozen base: the student, the critic and the teacher bank.

One base with adapters needs about a third of the memory of the reference code's three full
model copies (generator, real, fake). Two things here differ from calling peft/diffusers
directly, each on purpose:

* **Any layout loads.** A teacher file in the kohya or ComfyUI layout (a manifest ``lora_path``)
  is converted on load (``methods.lora.read_lora_file``, through methods/lora_formats.py) and
  then checked and loaded like a diffusers one, with the same outputs.
* **Loading is validated.** A teacher whose keys name modules the backbone does not have, whose
  shapes do not fit it, whose weights hold NaN/inf, or whose rank or target modules differ from
  the other teachers' (the odd one out named against the majority), is an error naming the LoRA
  and the file; ``check`` does this for all of a run's teachers before any is used. (The
  reference bank silently keeps the previous teacher when a name is missing and skips shape
  mismatches; that corrupts a run without a trace.)
* **Switching is direct.** ``transformer.set_adapters`` walks every LoRA layer and toggles
  ``requires_grad`` on every loaded adapter: ~50 ms with 50 adapters on the tiny model, and the
  DMD loop switches about five times per step. ``activate`` only sets the active adapter list
  of each LoRA layer (peft's ``BaseTunerLayer._active_adapter``), ~0.1 ms; trainability is set
  once at creation instead. ``tests/test_dmd.py`` checks both give identical outputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from bench.errors import BenchError, NonFiniteError
from methods.lora import WEIGHT_NAME, MissingLoraError, check_finite_lora, load_lora, read_lora_file
from methods.lora_formats import LoraFormatError

_KEY = re.compile(r"^(?:transformer\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


class LoraMismatchError(BenchError, ValueError):
    """A LoRA that does not fit the backbone or the bank."""


@dataclass(frozen=True)
class Inspected:
    """What reading a teacher file showed: it parses, is finite and fits the backbone."""

    name: str
    file: Path
    rank: int
    targets: frozenset[str]

    def __str__(self) -> str:
        return f"teacher LoRA {self.name!r} ({self.file})"


class AdapterBank:
    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.frozen: dict[str, Path] = {}   # teacher name -> file
        self._loaded: list[Inspected] = []
        self._seen: dict[tuple, Inspected] = {}  # (name, file, size, mtime) -> inspection, read once
        self._linears: dict[str, tuple[int, int]] = {}  # module -> (in, out), to check LoRA shapes
        for mname, module in transformer.named_modules():
            base = getattr(module, "base_layer", module)  # a peft LoRA layer wraps the Linear
            if isinstance(base, torch.nn.Linear):
                self._linears[mname] = (base.in_features, base.out_features)
        self._module_names = {name for name, _ in transformer.named_modules()}

    # -- loading ----------------------------------------------------------------------------------
    def check(self, teachers: Mapping[str, str | Path]) -> None:
        """Validate every teacher a run needs before the first is used: each exists, parses, has
        finite weights and fits the backbone, and all (with those already loaded) share one rank
        and one set of target modules. A bad 7th teacher then fails in seconds, not after six
        effects were evaluated; an odd one out is named against the majority, whatever the order."""
        seen = [self._inspect(name, path) for name, path in teachers.items() if name not in self.frozen]
        _agree(self._loaded + seen)

    def add_teacher(self, name: str, path: str | Path) -> None:
        """Load a frozen teacher LoRA as adapter ``name`` after checking it fits."""
        if name in self.frozen:
            raise ValueError(f"teacher {name!r} is already in the bank ({self.frozen[name]})")
        info = self._inspect(name, path)
        _agree(self._loaded + [info])
        load_lora(self.transformer, info.file, name)
        self._loaded.append(info)
        self.frozen[name] = info.file
        self._mark_trainable()

    def _inspect(self, name: str, path: str | Path) -> Inspected:
        path = Path(path)
        file = path / WEIGHT_NAME if path.is_dir() else path
        if not file.exists():
            raise MissingLoraError(f"teacher LoRA {name!r}: no weights at {file}")
        stat = file.stat()
        memo = (name, str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in self._seen:
            self._seen[memo] = self._read(name, file)
        return self._seen[memo]

    def _read(self, name: str, file: Path) -> Inspected:
        try:  # any layout: a kohya / ComfyUI teacher is converted on load (methods/lora_formats.py)
            state, _ = read_lora_file(file)
        except (LoraFormatError, NonFiniteError) as err:
            raise type(err)(f"teacher LoRA {name!r}: {err}") from err
        check_finite_lora(state, f"teacher LoRA {name!r} ({file})")
        ranks, targets, unknown, misfit = set(), set(), [], []
        for key, tensor in state.items():
            m = _KEY.match(key)
            if m is None:
                raise LoraMismatchError(f"teacher LoRA {name!r} ({file}): unrecognised key {key!r}")
            module = m["module"]
            if module not in self._module_names:
                unknown.append(module)
                continue
            if module in self._linears:  # A is (rank, in), B is (out, rank)
                fan_in, fan_out = self._linears[module]
                if (m["ab"] == "A" and tensor.shape[-1] != fan_in) or (m["ab"] == "B" and tensor.shape[0] != fan_out):
                    misfit.append(f"{key} {tuple(tensor.shape)} on a {fan_in}->{fan_out} layer")
            if m["ab"] == "A":
                ranks.add(tensor.shape[0])
            targets.add(module.split(".", 2)[-1] if module.startswith("transformer_blocks.") else module)
        if unknown:
            raise LoraMismatchError(f"teacher LoRA {name!r} ({file}) names {len(unknown)} module(s) this "
                                    f"backbone does not have, e.g. {unknown[0]!r}: it was trained for "
                                    "another model")
        if misfit:
            raise LoraMismatchError(f"teacher LoRA {name!r} ({file}) has {len(misfit)} tensor(s) whose shape "
                                    f"does not fit this backbone, e.g. {misfit[0]}: it was trained for another model")
        if len(ranks) != 1:
            raise LoraMismatchError(f"teacher LoRA {name!r} ({file}) has mixed ranks {sorted(ranks)}")
        return Inspected(name, file, ranks.pop(), frozenset(targets))

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


def _agree(adapters: list[Inspected]) -> None:
    """All ``adapters`` share one rank and one set of targets, else name the odd ones out."""
    def targets_of(a: Inspected) -> str:
        return ", ".join(sorted(a.targets))

    def differ(a: Inspected, usual: Inspected) -> str:
        return (f"targets other modules (extra: {sorted(a.targets - usual.targets)}, "
                f"missing: {sorted(usual.targets - a.targets)})")

    _odd_ones_out(adapters, "rank", lambda a: a.rank, lambda a, _: f"has rank {a.rank}",
                  lambda a: f"rank {a.rank}")
    _odd_ones_out(adapters, "target modules", targets_of, differ, lambda a: f"targets {targets_of(a)}")


def _odd_ones_out(adapters: list[Inspected], what: str, key: Callable[[Inspected], object],
                  odd: Callable[[Inspected, Inspected], str], usual: Callable[[Inspected], str]) -> None:
    """Group ``adapters`` by ``key``; when they differ, name each one outside the largest group
    against it -- not against whichever file happened to be read first."""
    groups: dict[object, list[Inspected]] = {}
    for a in adapters:
        groups.setdefault(key(a), []).append(a)
    if len(groups) < 2:
        return
    ordered = sorted(groups.values(), key=len, reverse=True)
    if len(ordered[0]) == len(ordered[1]):  # no majority to measure against: list every group
        listed = "; ".join(f"{usual(g[0])}: {', '.join(str(a) for a in g[:3])}" for g in ordered)
        raise LoraMismatchError(f"teacher LoRAs disagree on {what} with no majority: {listed}")
    majority = ordered[0]
    outliers = [a for g in ordered[1:] for a in g]
    named = "; ".join(f"{a} {odd(a, majority[0])}" for a in outliers[:5])
    more = f" (and {len(outliers) - 5} more)" if len(outliers) > 5 else ""
    raise LoraMismatchError(f"{named}{more}; the other {len(majority)} teachers have {usual(majority[0])}")
