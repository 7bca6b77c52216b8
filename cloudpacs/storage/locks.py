"""Short-lived named locks in the database, shared by every process and node.

Why: FerretDB v1 applies update operators ($inc, $addToSet, ...) as an unisolated
read-modify-write, so concurrent updates of one document lose writes (measured: 200
concurrent $inc of one counter ended at 7). Inserting a document with a unique `_id` *is*
atomic, so a lock is one insert and its release one delete. A lock whose holder died expires.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from cloudpacs.errors import Unavailable

LOCK_TTL_SECONDS = 60.0
ACQUIRE_TIMEOUT_SECONDS = 30.0


class Locks:
    def __init__(self, collection: Any, now: Any) -> None:
        self.collection = collection  # storage.schema.LOCKS
        self.now = now

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        token = uuid.uuid4().hex
        await self._acquire(name, token)
        try:
            yield
        finally:
            await asyncio.shield(self.collection.delete_one({"_id": name, "owner": token}))

    async def _acquire(self, name: str, token: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACQUIRE_TIMEOUT_SECONDS
        wait = 0.002
        while True:
            now = self.now()
            try:
                await self.collection.insert_one(
                    {
                        "_id": name,
                        "owner": token,
                        "expires_at": now + timedelta(seconds=LOCK_TTL_SECONDS),
                    }
                )
                return
            except DuplicateKeyError:
                await self.collection.delete_one({"_id": name, "expires_at": {"$lt": now}})
            if loop.time() > deadline:
                raise Unavailable(f"lock {name} is busy")
            await asyncio.sleep(wait * random.uniform(0.5, 1.5))
            wait = min(wait * 2, 0.1)
