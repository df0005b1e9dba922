"""nodes/lru.py: the one LRU map behind the match store and the match route's cache of encoded bodies."""

import importlib.util
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lru_module():
    # Loaded from its file: importing the `nodes` package needs ComfyUI, and lru.py imports nothing of the pack.
    spec = importlib.util.spec_from_file_location("coat_pack_lru", ROOT / "nodes" / "lru.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LRU = _lru_module().LRU


def test_the_least_recently_used_entry_goes_first():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1          # a read makes "a" the newest
    cache.put("c", 3)                   # over capacity: "b", the oldest, goes
    assert "b" not in cache and cache.get("b") is None
    assert cache.keys() == ["a", "c"] and len(cache) == 2
    cache.put("a", 10)                  # an update keeps the entry's place
    assert cache.keys() == ["a", "c"] and cache.get("a") == 10


def test_pop_clear_and_capacity():
    cache = LRU(3)
    for i in range(3):
        cache.put(i, str(i))
    assert cache.pop(1) == "1" and cache.pop(1) is None and cache.pop(1, "gone") == "gone"
    cache.clear()
    assert len(cache) == 0 and cache.get(0) is None
    for bad in (0, -1):
        with pytest.raises(ValueError, match="capacity"):
            LRU(bad)


def test_concurrent_writers_and_readers_keep_it_bounded():
    cache = LRU(8)

    def work(offset):
        for i in range(2000):
            cache.put(offset + i, i)
            cache.get(offset + i // 2)

    threads = [threading.Thread(target=work, args=(k * 10_000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 8 and len(cache.keys()) == 8


def test_both_users_share_the_class():
    text = {name: (ROOT / "nodes" / name).read_text() for name in ("routes.py", "match_store.py")}
    for name, source in text.items():
        assert "from .lru import LRU" in source and "OrderedDict" not in source, name
