"""Group commit for rollups: the new instances of one study that arrive while its previous
rollup update runs are counted in by one update.

Why: a study's rollups are updated under a lock (storage.locks) that concurrent ingests of
the same study (a viewer's STOW-RS of a series, a folder of one study) otherwise take one
after the other, each with its own lock insert and delete and series, study and member-list
updates. With a batch per study, 16 concurrent ingests of one study cost a few updates
instead of 16 rounds, and no lock contention within the process.

Each study has at most one batch running and one open; the open one is applied when the
running one ends. The batch runs in its own task, so a cancelled ingest cannot stop it
half way for the others in it; a failure is every member's failure (their journal entries
stay, and the sweep recomputes the study).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cloudpacs.errors import Unavailable

Apply = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


@dataclass
class _Batch:
    docs: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RollupBatches:
    def __init__(self, apply: Apply) -> None:
        self._apply = apply
        self._open: dict[str, _Batch] = {}
        self._running: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, study: str, doc: dict[str, Any]) -> None:
        """Count `doc` into its study's rollups; returns once they include it."""
        batch = self._open.get(study)
        if batch is None:
            batch = self._open[study] = _Batch()
            task = asyncio.create_task(self._run(study, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        batch.docs.append(doc)
        await asyncio.shield(batch.done)

    async def _run(self, study: str, batch: _Batch) -> None:
        try:
            previous = self._running.get(study)
            if previous is not None:
                await asyncio.wait([previous])
            del self._open[study]  # closed: later instances form the next batch
            self._running[study] = batch.done
            await self._apply(study, batch.docs)
            batch.done.set_result(None)
        except Exception as exc:  # noqa: BLE001 - handed to every member of the batch
            batch.done.set_exception(exc)
        except BaseException:  # cancelled (shutdown): the members must not wait forever
            batch.done.set_exception(Unavailable("rollup update interrupted"))
            raise
        finally:
            if self._open.get(study) is batch:
                del self._open[study]
            if self._running.get(study) is batch.done:
                del self._running[study]
            batch.done.exception()  # retrieved, even if every member was cancelled
