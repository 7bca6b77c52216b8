"""Single flight (storage.single_flight) with a fake lookup: concurrent callers of one key
share one lookup, its result and its failure; nothing is kept once it ends."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from cloudpacs.storage.single_flight import SingleFlight


class FakeLookup:
    """Answers `key:n` for the nth lookup of a key; holds each until `release` is set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, key: str) -> str:
        self.calls.append(key)
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return f"{key}:{self.calls.count(key)}"


async def cancel(caller: asyncio.Task[str]) -> None:
    caller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await caller


async def test_concurrent_callers_of_one_key_share_one_lookup() -> None:
    lookup = FakeLookup()
    flight = SingleFlight(lookup)
    callers = [asyncio.create_task(flight.get("a")) for _ in range(5)]
    other = asyncio.create_task(flight.get("b"))
    await asyncio.sleep(0)
    lookup.release.set()
    assert await asyncio.gather(*callers) == ["a:1"] * 5
    assert await other == "b:1"
    assert sorted(lookup.calls) == ["a", "b"]


async def test_a_later_caller_gets_a_new_lookup() -> None:
    lookup = FakeLookup()
    lookup.release.set()
    flight = SingleFlight(lookup)
    assert await flight.get("a") == "a:1"
    assert await flight.get("a") == "a:2"
    assert lookup.calls == ["a", "a"]


async def test_a_failure_reaches_every_caller_and_is_not_kept() -> None:
    lookup = FakeLookup()
    lookup.fail_with = RuntimeError("database gone")
    flight = SingleFlight(lookup)
    callers = [asyncio.create_task(flight.get("a")) for _ in range(3)]
    await asyncio.sleep(0)
    lookup.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    lookup.fail_with = None
    assert await flight.get("a") == "a:2"


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    lookup = FakeLookup()
    flight = SingleFlight(lookup)
    first = asyncio.create_task(flight.get("a"))
    second = asyncio.create_task(flight.get("a"))
    await asyncio.sleep(0)
    await cancel(first)
    lookup.release.set()
    assert await second == "a:1"
    assert lookup.calls == ["a"]
    with pytest.raises(asyncio.CancelledError):
        first.result()


async def test_a_failure_no_caller_waits_for_is_not_reported_as_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lookup = FakeLookup()
    lookup.fail_with = RuntimeError("database gone")
    flight = SingleFlight(lookup)
    caller = asyncio.create_task(flight.get("a"))
    await asyncio.sleep(0)
    await cancel(caller)
    lookup.release.set()
    await asyncio.sleep(0.01)  # the lookup fails with no one waiting
    del caller
    gc.collect()
    assert "never retrieved" not in caplog.text
