"""API token records: id, subject, grants, expiry, revocation, and the hash of the secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloudpacs.storage.database import Database, translate_errors
from cloudpacs.storage.schema import TOKENS


class TokenStore:
    def __init__(self, database: Database) -> None:
        self.collection = database.db[TOKENS]

    async def insert(self, record: dict[str, Any]) -> None:
        async with translate_errors():
            await self.collection.insert_one(record)

    async def get(self, token_id: str) -> dict[str, Any] | None:
        async with translate_errors():
            doc: dict[str, Any] | None = await self.collection.find_one({"_id": token_id})
        return doc

    async def list(self) -> list[dict[str, Any]]:
        async with translate_errors():
            docs: list[dict[str, Any]] = await (
                self.collection.find({}, {"secret_sha256": 0}).sort("created_at", 1)
            ).to_list(None)
        return docs

    async def revoke(self, token_id: str, at: datetime) -> bool:
        async with translate_errors():
            result = await self.collection.update_one(
                {"_id": token_id, "revoked_at": None}, {"$set": {"revoked_at": at}}
            )
        return result.modified_count == 1
