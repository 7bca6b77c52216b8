"""Connecting to MongoDB (or FerretDB) and learning what the server can do."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from cloudpacs.errors import Unavailable

log = logging.getLogger(__name__)

SERVER_SELECTION_TIMEOUT_MS = 5000
NOT_IMPLEMENTED_CODE = 238  # FerretDB's answer for commands and options it lacks


@dataclass(frozen=True)
class ServerInfo:
    version: str
    ferretdb: bool

    @property
    def name(self) -> str:
        return "FerretDB" if self.ferretdb else "MongoDB"


@dataclass
class Database:
    """An open client and the archive database on it."""

    client: AsyncMongoClient  # type: ignore[type-arg]
    db: AsyncDatabase  # type: ignore[type-arg]

    async def ping(self) -> None:
        async with translate_errors():
            await self.db.command("ping")

    async def server_info(self) -> ServerInfo:
        async with translate_errors():
            info = await self.client.admin.command("buildInfo")
        return ServerInfo(version=str(info.get("version")), ferretdb="ferretdbVersion" in info)

    async def close(self) -> None:
        await self.client.close()


def open_database(
    uri: str, name: str, server_selection_timeout_ms: int = SERVER_SELECTION_TIMEOUT_MS
) -> Database:
    client: AsyncMongoClient = AsyncMongoClient(  # type: ignore[type-arg]
        uri,
        serverSelectionTimeoutMS=server_selection_timeout_ms,
        tz_aware=True,
        appname="cloudpacs",
    )
    return Database(client=client, db=client[name])


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn pymongo's transient errors into Unavailable (retry later)."""
    try:
        yield
    except ConnectionFailure as exc:
        raise Unavailable(f"database unreachable: {type(exc).__name__}: {exc}"[:300]) from exc
    except OperationFailure:
        raise
    except PyMongoError as exc:
        if getattr(exc, "timeout", False):
            raise Unavailable(f"database timeout: {type(exc).__name__}") from exc
        raise
