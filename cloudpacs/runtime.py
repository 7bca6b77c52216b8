"""Composition root: settings -> database (embedded or configured) -> services.

cli.py uses this to run any mix of the HTTP API, the folder daemon and the importer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cloudpacs.config import Settings
from cloudpacs.embedded import EmbeddedFerretDB, add_id_lookup_indexes
from cloudpacs.http.services import Services
from cloudpacs.ingest import Ingestor
from cloudpacs.metrics import Metrics
from cloudpacs.parsing import Parser, parser_for
from cloudpacs.retrieve import RetrieveService
from cloudpacs.search import SearchService
from cloudpacs.storage.database import Database, open_database
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.schema import init_schema
from cloudpacs.storage.sweep import sweep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    database: Database
    store: InstanceStore
    ingestor: Ingestor
    metrics: Metrics
    schema_notes: list[str]
    parser: Parser

    def services(self) -> Services:
        return Services(
            settings=self.settings,
            database=self.database,
            search=SearchService(self.store),
            retrieve=RetrieveService(self.store),
            ingestor=self.ingestor,
            metrics=self.metrics,
        )


def build_runtime(
    settings: Settings,
    database: Database,
    metrics: Metrics,
    notes: list[str],
    parser: Parser | None = None,
) -> Runtime:
    """The services over one database; `parser` (default: from the settings) is the
    caller's to close, and open_runtime closes the one it makes."""
    store = InstanceStore(database)
    parser = parser or parser_for(settings)
    ingestor = Ingestor(store, metrics, settings.conflict_policy, parser)
    return Runtime(settings, database, store, ingestor, metrics, notes, parser)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, sweep_periodically: bool = True, start_parser: bool = True
) -> AsyncIterator[Runtime]:
    """Start what the settings ask for; tear it down in reverse order. The parser
    processes start now (unless start_parser is false: nothing will be ingested), so
    that the first ingest does not wait for them."""
    async with contextlib.AsyncExitStack() as stack:
        uri = settings.mongo_uri
        if uri is None:
            server = EmbeddedFerretDB(settings.ferretdb_binary, settings.embedded_db_dir)
            await server.start()
            stack.push_async_callback(server.stop)
            uri = server.uri
        database = open_database(uri, settings.database)
        stack.push_async_callback(database.close)
        await database.ping()
        notes = await init_schema(database)
        if settings.mongo_uri is None:
            await asyncio.to_thread(
                add_id_lookup_indexes, settings.embedded_db_dir, settings.database
            )
        runtime = build_runtime(settings, database, Metrics(), notes)
        stack.push_async_callback(runtime.parser.close)
        if start_parser:
            await runtime.parser.start()
        if sweep_periodically:
            task = asyncio.create_task(_sweep_forever(runtime))
            stack.push_async_callback(_cancel, task)
        yield runtime


async def _sweep_forever(runtime: Runtime) -> None:
    settings = runtime.settings
    while True:
        try:
            await sweep(runtime.store, settings.orphan_grace_seconds)
        except Exception:
            log.exception("sweep.failed")
        await asyncio.sleep(settings.sweep_interval_seconds)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
