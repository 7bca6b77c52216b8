"""A store on its own client whose every `find` is recorded: which reads reach the server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from cloudpacs.runtime import Runtime
from cloudpacs.storage.database import Database
from cloudpacs.storage.instances import InstanceStore


class Finds(monitoring.CommandListener):
    """Every `find`: its filter (`filters`), and its collection with it (`finds`)."""

    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []
        self.finds: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            query = dict(event.command.get("filter", {}))
            self.filters.append(query)
            self.finds.append((event.command["find"], query))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@contextlib.asynccontextmanager
async def listened_store(runtime: Runtime) -> AsyncIterator[tuple[InstanceStore, Finds]]:
    listener = Finds()
    settings = runtime.settings
    assert settings.mongo_uri is not None
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, event_listeners=[listener], tz_aware=True
    )
    try:
        database = Database(client=client, db=client[settings.database])
        yield InstanceStore(database, runtime.store.blobs), listener
    finally:
        await client.close()
