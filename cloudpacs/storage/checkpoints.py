"""Resumable progress markers for long jobs (S3 backfill): one document per job."""

from __future__ import annotations

from typing import Any

from cloudpacs.storage.database import Database, translate_errors
from cloudpacs.storage.instances import utcnow
from cloudpacs.storage.schema import CHECKPOINTS


class CheckpointStore:
    def __init__(self, database: Database) -> None:
        self.collection = database.db[CHECKPOINTS]

    async def get(self, job: str) -> dict[str, Any] | None:
        async with translate_errors():
            doc: dict[str, Any] | None = await self.collection.find_one({"_id": job})
        return doc

    async def advance(self, job: str, position: str, counts: dict[str, int]) -> None:
        update = {"$set": {"position": position, "updated_at": utcnow()}, "$inc": counts}
        async with translate_errors():
            await self.collection.update_one({"_id": job}, update, upsert=True)
