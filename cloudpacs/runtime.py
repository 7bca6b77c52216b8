"""Composition root: settings -> database (embedded or configured) -> services.

cli.py uses this to run any mix of the HTTP API, the folder daemon and the importer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cloudpacs.audit import AuditLog
from cloudpacs.auth.authenticator import Authenticator
from cloudpacs.auth.network import NetworkPolicy
from cloudpacs.auth.oidc import JwtVerifier
from cloudpacs.auth.tokens import TokenService
from cloudpacs.config import Settings
from cloudpacs.deletion import DeletionService
from cloudpacs.embedded import EmbeddedFerretDB, add_id_lookup_indexes
from cloudpacs.http.services import Services
from cloudpacs.ingest import Ingestor
from cloudpacs.metrics import Metrics
from cloudpacs.parsing import Parser, parser_for
from cloudpacs.retrieve import RetrieveService
from cloudpacs.search import SearchService
from cloudpacs.storage.audit import AuditStore
from cloudpacs.storage.database import Database, open_database
from cloudpacs.storage.directory_files import DirectoryFiles
from cloudpacs.storage.file_stores import FileStore, open_file_store
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.place_cache import PlaceCache
from cloudpacs.storage.schema import assign_default_project, init_schema
from cloudpacs.storage.sweep import sweep
from cloudpacs.storage.tokens import TokenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    database: Database
    store: InstanceStore
    ingestor: Ingestor
    metrics: Metrics
    schema_notes: list[str]
    audit: AuditLog
    tokens: TokenService
    parser: Parser

    def services(self) -> Services:
        settings = self.settings
        return Services(
            settings=settings,
            database=self.database,
            search=SearchService(self.store),
            retrieve=RetrieveService(self.store),
            ingestor=self.ingestor,
            metrics=self.metrics,
            authenticator=Authenticator(self.tokens, _jwt(settings), settings.auth_enabled),
            tokens=self.tokens,
            network=NetworkPolicy(settings.allowed_networks, settings.trusted_proxies),
            audit=self.audit,
            deletion=DeletionService(self.store),
        )


def _jwt(settings: Settings) -> JwtVerifier | None:
    if not settings.jwt_jwks:
        return None
    assert settings.jwt_issuer and settings.jwt_audience  # checked by load_settings
    return JwtVerifier(
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_jwks,
        settings.jwt_algorithms,
        settings.jwt_leeway_seconds,
        settings.jwt_projects_claim,
    )


def build_runtime(
    settings: Settings,
    database: Database,
    metrics: Metrics,
    notes: list[str],
    parser: Parser | None = None,
    files: FileStore | None = None,
) -> Runtime:
    """The services over one database and its file store (storage.file_stores.open_file_store;
    GridFS by default); `parser` (default: from the settings) is the caller's to close, and
    open_runtime closes the one it makes."""
    store = InstanceStore(database, files, _place_cache(settings, files, metrics))
    parser = parser or parser_for(settings)
    audit = AuditLog(
        AuditStore(database),
        metrics,
        settings.audit_flush_seconds,
        settings.audit_buffer_limit,
        projects_of=store.study_projects,
    )
    ingestor = Ingestor(
        store, metrics, settings.conflict_policy, parser, settings.default_project, audit
    )
    tokens = TokenService(TokenStore(database), settings.token_cache_seconds)
    return Runtime(settings, database, store, ingestor, metrics, notes, audit, tokens, parser)


def _place_cache(
    settings: Settings, files: FileStore | None, metrics: Metrics
) -> PlaceCache | None:
    """Only a directory store's files can be checked cheaply on every cache hit."""
    if files is None or files.kind != DirectoryFiles.kind or settings.place_cache_entries < 1:
        return None
    lookups = metrics.place_cache_lookups
    return PlaceCache(
        settings.place_cache_entries,
        settings.place_cache_seconds,
        on_lookup=lambda result: lookups.labels(result).inc(),
    )


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
        notes += await assign_default_project(database, settings.default_project)
        if settings.mongo_uri is None:
            await asyncio.to_thread(
                add_id_lookup_indexes, settings.embedded_db_dir, settings.database
            )
        files = await open_file_store(database, settings)
        notes.append(f"original files kept in {_where(files, settings)}")
        runtime = build_runtime(settings, database, Metrics(), notes, files=files)
        runtime.audit.start()
        stack.push_async_callback(runtime.audit.close)
        stack.push_async_callback(runtime.parser.close)
        if start_parser:
            await runtime.parser.start()
        if sweep_periodically:
            task = asyncio.create_task(_sweep_forever(runtime))
            stack.push_async_callback(_cancel, task)
        yield runtime


def _where(files: FileStore, settings: Settings) -> str:
    return f"directory {settings.file_dir}" if files.kind == "directory" else "GridFS"


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
