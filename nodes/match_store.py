"""In-memory, bounded store of dense match data for the match panel (served by the pack's route).

The Align and Transfer nodes :func:`put` one entry per run and put only its id into their UI output; the route
``GET /coat/matches/{id}`` answers :func:`get`. Ids are random 16-digit hex strings; :func:`valid_id` checks one
before any lookup. The oldest entries go first once ``capacity`` is reached.
"""

from __future__ import annotations

import re
import secrets

from .lru import LRU

_ID = re.compile(r"[0-9a-f]{16}")


def valid_id(match_id) -> bool:
    return isinstance(match_id, str) and _ID.fullmatch(match_id) is not None


class MatchStore:
    """A thread-safe LRU map id -> JSON-ready dict (the execution thread writes, the server thread reads)."""

    def __init__(self, capacity: int = 32):
        self._items: LRU[str, dict] = LRU(capacity)

    @property
    def capacity(self) -> int:
        return self._items.capacity

    def put(self, data: dict) -> str:
        """Store ``data`` under a new random id and return the id."""
        match_id = secrets.token_hex(8)
        self._items.put(match_id, data)
        return match_id

    def get(self, match_id: str) -> dict | None:
        """The entry, or None for an unknown, expired or malformed id."""
        if not valid_id(match_id):
            return None
        return self._items.get(match_id)

    def discard(self, match_id: str) -> None:
        """Forget one entry (nothing happens for an unknown id)."""
        self._items.pop(match_id)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, match_id) -> bool:
        return match_id in self._items


STORE = MatchStore()
put, get = STORE.put, STORE.get
