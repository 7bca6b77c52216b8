"""Group commit: work items for one key that arrive while the previous batch of that key runs
are applied together, as the next batch.

Why: on the embedded FerretDB every write is its own SQLite transaction, and under
concurrent ingest the archive is bounded by write transactions per second, not by CPU
(perf/RESULTS.md). Used for the journal entries and instance documents (one `insert_many`:
storage.insert_batches) and for the rollups of a study (one round of upserts under one lock:
InstanceStore.apply_rollups).

Each key has at most one batch running and one open; the open one is applied when the
running one ends. A batch runs in its own task, so a cancelled caller cannot stop it half
way for the others in it. Every member gets the batch's result, or its exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cloudpacs.errors import Unavailable

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Batch(Generic[Item, Result]):
    items: list[Item] = field(default_factory=list)
    done: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit(Generic[Item, Result]):
    def __init__(self, apply: Callable[[str, list[Item]], Awaitable[Result]]) -> None:
        self._apply = apply
        self._open: dict[str, _Batch[Item, Result]] = {}
        self._running: dict[str, asyncio.Future[Result]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, key: str, item: Item) -> tuple[Result, int]:
        """Apply `item` with the others of its batch: the batch's result, and the item's
        position in the batch."""
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch()
            task = asyncio.create_task(self._run(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        index = len(batch.items)
        batch.items.append(item)
        return await asyncio.shield(batch.done), index

    async def _run(self, key: str, batch: _Batch[Item, Result]) -> None:
        try:
            previous = self._running.get(key)
            if previous is not None:
                await asyncio.wait([previous])
            del self._open[key]  # closed: later items form the next batch
            self._running[key] = batch.done
            batch.done.set_result(await self._apply(key, batch.items))
        except Exception as exc:  # noqa: BLE001 - handed to every member of the batch
            batch.done.set_exception(exc)
        except BaseException:  # cancelled (shutdown): the members must not wait forever
            batch.done.set_exception(Unavailable("batched write interrupted"))
            raise
        finally:
            if self._open.get(key) is batch:
                del self._open[key]
            if self._running.get(key) is batch.done:
                del self._running[key]
            batch.done.exception()  # retrieved, even if every member was cancelled
