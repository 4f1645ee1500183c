"""Name registries: the one place a config string becomes a backbone, head, loss or model builder.

A registry is filled once, at import of the module that defines its entries, and only read afterwards;
it is the package's only module-level mutable state.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cxrlt.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered `name -> entry` map whose lookups fail with the known names and a close match."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@REGISTRY.decorator("name")` registers the decorated class or function under `name`."""
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
