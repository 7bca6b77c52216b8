"""Group commit of inserts (storage.insert_batches): against a real FerretDB collection, and
the failure of a whole command with a fake one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError

from cloudpacs.runtime import Runtime
from cloudpacs.storage.insert_batches import InsertBatches


class CountingCollection:
    """A real collection whose insert_many calls are counted."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.calls: list[int] = []

    async def insert_many(self, docs: list[dict[str, Any]], ordered: bool) -> Any:
        self.calls.append(len(docs))
        return await self.collection.insert_many(docs, ordered=ordered)


async def test_concurrent_inserts_go_together_and_each_gets_its_own_outcome(
    runtime: Runtime,
) -> None:
    collection = runtime.database.db["batch_test"]
    await collection.insert_one({"_id": "taken"})
    counting = CountingCollection(collection)
    batches = InsertBatches(counting)
    ids = [f"doc{i}" for i in range(30)] + ["taken", "doc3"]

    outcomes = await asyncio.gather(
        *(batches.insert({"_id": key, "n": n}) for n, key in enumerate(ids)),
        return_exceptions=True,
    )

    failed = [ids[i] for i, outcome in enumerate(outcomes) if outcome is not None]
    assert failed == ["taken", "doc3"]
    assert all(isinstance(o, DuplicateKeyError) for o in outcomes if o is not None)
    stored = {doc["_id"]: doc.get("n") for doc in await collection.find().to_list(None)}
    assert stored == {"taken": None, **{f"doc{i}": i for i in range(30)}}  # the first doc3
    assert sum(counting.calls) == len(ids)
    assert len(counting.calls) < len(ids) / 4  # a few commands, not one per document


class FailingCollection:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def insert_many(self, docs: list[dict[str, Any]], ordered: bool) -> Any:
        await self.release.wait()
        raise AutoReconnect("connection lost")


async def test_a_failed_command_fails_every_caller_in_it_and_a_cancelled_one_alone() -> None:
    collection = FailingCollection()
    batches = InsertBatches(collection)
    callers = [asyncio.create_task(batches.insert({"_id": i})) for i in range(3)]
    await asyncio.sleep(0.01)
    callers[0].cancel()
    collection.release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(isinstance(o, AutoReconnect) for o in outcomes[1:])
    with pytest.raises(AutoReconnect):  # the next batch runs (and fails) on its own
        await batches.insert({"_id": 9})
