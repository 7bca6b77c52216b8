"""The place cache's own rules (pure logic): bounded, aged out, forgotten on request."""

from __future__ import annotations

from cloudpacs.storage.place_cache import PlaceCache


def _place(sop: str, file_id: str = "f1") -> dict[str, str]:
    return {"_id": sop, "file_id": file_id, "study": "1.2", "series": "1.2.3", "meta": "{}"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_keeps_only_place_fields_and_hands_out_copies() -> None:
    cache = PlaceCache(10, 60)
    cache.put(_place("a"))
    got = cache.get("a")
    assert got == {"_id": "a", "file_id": "f1", "study": "1.2", "series": "1.2.3"}
    got["file_id"] = "changed"
    assert cache.get("a") == {"_id": "a", "file_id": "f1", "study": "1.2", "series": "1.2.3"}
    assert cache.get("b") is None


def test_the_least_recently_used_place_goes_first() -> None:
    cache = PlaceCache(2, 60)
    cache.put(_place("a"))
    cache.put(_place("b"))
    assert cache.get("a") is not None  # now b is the least recently used
    cache.put(_place("c"))
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_places_age_out() -> None:
    clock = Clock()
    cache = PlaceCache(10, 60, clock)
    cache.put(_place("a"))
    clock.now += 59
    assert cache.get("a") is not None
    clock.now += 2  # 61 s after it was put: reading it did not make it younger
    assert cache.get("a") is None
    assert len(cache) == 0


def test_forget_and_zero_entries() -> None:
    cache = PlaceCache(10, 60)
    cache.put(_place("a"))
    cache.put(_place("b"))
    cache.forget(["a", "never-there"])
    assert cache.get("a") is None and cache.get("b") is not None
    off = PlaceCache(0, 60)
    off.put(_place("a"))
    assert len(off) == 0 and off.get("a") is None


def test_every_lookup_is_reported() -> None:
    clock, results = Clock(), []
    cache = PlaceCache(10, 60, clock, on_lookup=results.append)
    cache.get("a")
    cache.put(_place("a"))
    cache.get("a")
    cache.stale("a")
    cache.get("a")
    cache.put(_place("b"))
    clock.now += 61
    cache.get("b")
    assert results == ["miss", "hit", "stale", "miss", "expired"]
    assert len(cache) == 0
