"""The audit trail: an append-only collection of access records.

This class only inserts and reads; nothing in cloudpacs updates or deletes an audit record.
On MongoDB the application user's role allows only `find` and `insert` on this collection
(deploy/mongo/create-users.sh); FerretDB has no custom roles, so there it is append-only by
the application alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from cloudpacs.storage.database import Database, translate_errors
from cloudpacs.storage.insert_batches import already_there_is_fine
from cloudpacs.storage.schema import AUDIT


class AuditStore:
    def __init__(self, database: Database) -> None:
        self.collection = database.db[AUDIT]

    async def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Insert records that carry their own `_id`: appending a batch again (its first
        write applied, but its caller cancelled or its reply lost) adds nothing twice."""
        async with translate_errors(), already_there_is_fine():
            await self.collection.insert_many(list(records), ordered=False)

    async def query(
        self,
        *,
        user: str | None = None,
        study: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Records matching every given condition, oldest first."""
        query: dict[str, Any] = {}
        if user:
            query["user"] = user
        if study:
            query["study"] = study
        if action:
            query["action"] = action
        if since or until:
            query["at"] = {
                **({"$gte": since} if since else {}),
                **({"$lt": until} if until else {}),
            }
        async with translate_errors():
            cursor = self.collection.find(query, {"_id": 0}, limit=limit).sort("at", 1)
            async for doc in cursor:
                yield doc
