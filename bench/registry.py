"""One small generic registry; each product noun has one instance (METHODS, METRICS, PRESETS, ...).

Entries may be objects or lazy ``"module:attr"`` strings so heavy backends are imported only
when used. Duplicate names raise; unknown names raise with the valid list and a "did you mean".
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.errors import BenchError

T = TypeVar("T")


class UnknownNameError(BenchError, KeyError):
    """An unknown registry name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, noun: str) -> None:
        self.noun = noun
        self._entries: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | str | None = None, *, aliases: tuple[str, ...] = ()):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(target: T | str) -> T | str:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.noun} {key!r} is already registered")
            self._entries[name] = target
            for alias in aliases:
                self._aliases[alias] = name
            return target

        if obj is None:
            return add
        return add(obj)

    def canonical(self, name: str) -> str:
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        valid = sorted(self._entries)
        close = difflib.get_close_matches(name, valid + sorted(self._aliases), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.noun} {name!r}.{hint} Valid {self.noun}s: {', '.join(valid)}"

    def get(self, name: str) -> T:
        key = self.canonical(name)
        entry = self._entries[key]
        if isinstance(entry, str):  # lazy "module:attr" target, resolved once
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[key] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def parse_names(text: str | None, valid: Callable[[str], object]) -> tuple[str, ...]:
    """Split a comma list (``"aop,ts"``) and validate every item with ``valid`` (raises)."""
    if not text:
        return ()
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        valid(name)
    return names
