"""Group commit for inserts (storage.group_commit): documents inserted into one collection
while the previous insert runs go to the server together, as one unordered `insert_many`.

Each caller still gets its own outcome: the error the server reports for its document
(a duplicate `_id`, a validation failure) is raised as `insert_one` would raise it, and a
failure of the whole command (connection lost) is raised to every caller in the batch.

`already_there_is_fine` makes an insert idempotent: a write retried (its first reply lost,
or its caller cancelled after the server had applied it) leaves what is already there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from cloudpacs.storage.group_commit import GroupCommit

DUPLICATE_KEY = 11000


class InsertBatches:
    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self._batches: GroupCommit[dict[str, Any], dict[int, dict[str, Any]]] = GroupCommit(
            self._insert_many
        )

    async def insert(self, doc: dict[str, Any]) -> None:
        errors, index = await self._batches.add("", doc)
        if index in errors:
            raise _write_error(errors[index])

    async def _insert_many(
        self, _key: str, docs: list[dict[str, Any]]
    ) -> dict[int, dict[str, Any]]:
        """The server's write error per document (by index), if any."""
        try:
            await self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            return {error["index"]: error for error in exc.details.get("writeErrors", [])}
        return {}


@asynccontextmanager
async def already_there_is_fine() -> AsyncIterator[None]:
    """Around an unordered `insert_many` of documents that carry their own `_id`: one
    already there is left as it is, and any other write error is raised."""
    try:
        yield
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise


def _write_error(error: dict[str, Any]) -> WriteError:
    message, code = str(error.get("errmsg", "write error")), int(error.get("code", 0))
    if code == DUPLICATE_KEY:
        return DuplicateKeyError(message, code, error)
    return WriteError(message, code, error)
