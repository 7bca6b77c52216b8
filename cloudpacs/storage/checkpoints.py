"""Resumable progress markers for long jobs: one document per job (S3 backfill: the last key
listed), or one per finished item of a job (migrate: each study copied in full)."""

from __future__ import annotations

from typing import Any

from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.database import Database, translate_errors
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

    async def mark_done(self, job: str, item: str, data: dict[str, Any]) -> None:
        """Record `item` of `job` as finished, with what a rerun needs to know about it."""
        doc = {"job": job, "item": item, "done_at": utcnow(), **data}
        async with translate_errors():
            await self.collection.replace_one({"_id": f"{job}|{item}"}, doc, upsert=True)

    async def done_items(self, job: str) -> dict[str, dict[str, Any]]:
        """Every finished item of `job`: item -> what mark_done recorded."""
        async with translate_errors():
            docs = await self.collection.find({"job": job}).to_list(None)
        return {doc["item"]: doc for doc in docs}

    async def forget(self, job: str, item: str) -> None:
        async with translate_errors():
            await self.collection.delete_one({"_id": f"{job}|{item}"})
