"""A small thread-safe LRU map, shared by the match store (``match_store``) and the route's cache of encoded
bodies (``routes``): at most ``capacity`` entries, a read makes an entry the newest, the oldest go first.

No ComfyUI or package import, so it can be loaded on its own (its test does)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Thread-safe (one writer thread and readers on others, as ComfyUI's execution and server threads are)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the newest entry), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Store ``value`` under ``key`` (a new key as the newest entry; a key already there keeps its place); the
        oldest entries go past ``capacity``."""
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove and return the value under ``key`` (``default`` when there is none)."""
        with self._lock:
            return self._items.pop(key, default)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def keys(self) -> list[K]:
        """The keys, oldest first (a copy)."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items
