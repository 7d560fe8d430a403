"""One way to register what vprompt chooses from (methods, model families, data sources), as timm's
``@register_model``: a decorator in the entry's own file, its package importing that file once.

A registry reads like a dict (name → entry) and lists its entries by ``order`` (lower first), then in the
order they registered; ``order`` is given where the list's order means something.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """name → entry, filled by :meth:`add` (through each kind's decorator); read-only otherwise."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[float, int, T]] = {}
        self._names: list[str] = []

    def add(self, name: str, entry: T, order: float = 0) -> T:
        """Register ``entry`` as ``name``; a name registered twice is an error (two files claiming it)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = (order, len(self._entries), entry)
        self._names = sorted(self._entries, key=lambda n: self._entries[n][:2])
        return entry

    def choose(self, name: str) -> T:
        """The entry ``name``, or a ValueError that lists the valid names (the one "unknown" message)."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._names)}")
        return self[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name][2]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._names)})"
