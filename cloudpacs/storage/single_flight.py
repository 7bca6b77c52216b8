"""Single flight: callers asking for the same key while its lookup runs share that lookup.

Why: the parts of one STOW-RS request, ingested at once, mostly name one study; each asks
which project holds it. Shared answers are only ever those of a lookup that ran while the
caller waited, so nothing is cached beyond it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


class SingleFlight(Generic[Key, Result]):
    def __init__(self, lookup: Callable[[Key], Coroutine[Any, Any, Result]]) -> None:
        self._lookup = lookup
        self._running: dict[Key, asyncio.Task[Result]] = {}

    async def get(self, key: Key) -> Result:
        task = self._running.get(key)
        if task is None or task.done():
            task = self._running[key] = asyncio.create_task(self._lookup(key))
            task.add_done_callback(lambda done: self._forget(key, done))
        # shielded: a cancelled caller does not cancel the lookup the others wait for
        return await asyncio.shield(task)

    def _forget(self, key: Key, task: asyncio.Task[Result]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved, even if every caller was cancelled
