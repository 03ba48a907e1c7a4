"""A bounded memo for the worker's hot paths: ``memo[key]`` is ``make(key)``, kept.

A dict subclass whose ``__missing__`` makes and keeps the value: a hit is the
dict's own subscript (C, no Python call), and an entry adds no object the
garbage collector tracks, unlike ``functools.lru_cache`` (a linked-list cell per
entry). When full it is emptied, not trimmed: the keys (ids, times, short texts)
come and go with runs, and the next run fills it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V], Generic[K, V]):
    __slots__ = ("_limit", "_make")

    def __init__(self, make: Callable[[K], V], limit: int) -> None:
        super().__init__()
        self._make = make
        self._limit = limit

    def __missing__(self, key: K) -> V:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._make(key)
        return value
