"""One registry per kind of thing a name chooses (datasets, sampling strategies, backbones, heads,
recurrent cells, video models, optimizers, schedulers, task kinds): names in registration order,
each with its one-line description, duplicates refused, unknown names answered with the allowed
ones.

One shape everywhere: a public `Registry` constant in the module that owns the kind (BACKBONES,
HEADS, VIDEO_MODELS, DEVICES, ...), read by the library and by the CLI's choices alike. One
registration style: `REG.add(name, item, about)`, or as a decorator `@REG.register(name, about)`;
a plain set of allowed values (devices, precisions, store formats) is `Registry.of(kind, names)`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind             # "backbone", "head", "video model": used in messages
        self._items: dict[str, T] = {}
        self._about: dict[str, str] = {}

    @classmethod
    def of(cls, kind: str, entries) -> "Registry[str]":
        """A registry of plain values, each name its own entry: `entries` maps name -> about, or
        lists the names (e.g. `Registry.of("device", ("auto", "cpu", "cuda"))`)."""
        reg = cls(kind)
        about = entries if isinstance(entries, dict) else dict.fromkeys(entries, "")
        for name, text in about.items():
            reg.add(name, name, text)
        return reg

    def add(self, name: str, item: T, about: str = "") -> T:
        if name in self._items:
            raise ValueError(f"An entry is already registered under the name '{name}'.")
        self._items[name] = item
        self._about[name] = about
        return item

    def register(self, name: str, about: str = "") -> Callable[[T], T]:
        """`add` as a decorator: the decorated function or class is the entry."""
        return lambda item: self.add(name, item, about)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._items)}")
        return self._items[name]

    def about(self, name: str) -> str:
        """The entry's one-line description."""
        self.get(name)
        return self._about[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def items(self) -> tuple[tuple[str, T], ...]:
        return tuple(self._items.items())

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:   # an unhashable value (a list from a config file) is simply not a name
            return False

    def __iter__(self):
        return iter(tuple(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
