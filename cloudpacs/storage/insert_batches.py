"""Group commit for inserts: documents inserted into one collection while the previous insert
runs go to the server together, as one unordered `insert_many`.

Why: on the embedded FerretDB every write is its own SQLite transaction, and under
concurrent ingest the archive is bounded by write transactions per second, not by CPU
(perf/RESULTS.md). One `insert_many` of the journal entries or instance documents that
arrived meanwhile is one transaction instead of many.

Each caller still gets its own outcome: the error the server reports for its document
(a duplicate `_id`, a validation failure) is raised as `insert_one` would raise it, and a
failure of the whole command (connection lost) is raised to every caller in the batch. The
command runs in its own task, so a cancelled caller does not cancel the others' inserts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from cloudpacs.errors import Unavailable

DUPLICATE_KEY = 11000


@dataclass
class _Batch:
    docs: list[dict[str, Any]] = field(default_factory=list)
    # index in docs -> the server's write error for that document
    done: asyncio.Future[dict[int, dict[str, Any]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class InsertBatches:
    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self._open: _Batch | None = None
        self._running: asyncio.Future[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def insert(self, doc: dict[str, Any]) -> None:
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        index = len(batch.docs)
        batch.docs.append(doc)
        errors = await asyncio.shield(batch.done)
        if index in errors:
            raise _write_error(errors[index])

    async def _run(self, batch: _Batch) -> None:
        try:
            if self._running is not None:
                await asyncio.wait([self._running])
            self._open = None  # closed: later documents form the next batch
            self._running = batch.done
            try:
                await self.collection.insert_many(batch.docs, ordered=False)
                batch.done.set_result({})
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                batch.done.set_result({error["index"]: error for error in errors})
        except Exception as exc:  # noqa: BLE001 - handed to every caller in the batch
            batch.done.set_exception(exc)
        except BaseException:  # cancelled (shutdown): the callers must not wait forever
            batch.done.set_exception(Unavailable("insert interrupted"))
            raise
        finally:
            if self._open is batch:
                self._open = None
            if self._running is batch.done:
                self._running = None
            batch.done.exception()  # retrieved, even if every caller was cancelled


def _write_error(error: dict[str, Any]) -> WriteError:
    message, code = str(error.get("errmsg", "write error")), int(error.get("code", 0))
    if code == DUPLICATE_KEY:
        return DuplicateKeyError(message, code, error)
    return WriteError(message, code, error)
