"""Command line: run, serve, ingest, import, db init|sweep, config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from cloudpacs import __version__
from cloudpacs.config import Settings, load_settings
from cloudpacs.daemon.service import FolderDaemon
from cloudpacs.errors import CloudPacsError
from cloudpacs.http.app import create_app
from cloudpacs.importer import import_paths
from cloudpacs.logs import setup_logging
from cloudpacs.runtime import Runtime, open_runtime
from cloudpacs.storage.sweep import sweep

log = logging.getLogger("cloudpacs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudpacs", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--config", type=Path, help="TOML settings file")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, home: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        if home:
            p.add_argument("--home", type=Path, help="state folder (default ./var)")
        return p

    run = add("run", "ingest daemon and HTTP API in one process")
    run.add_argument("--watch", type=Path, help="watched inbox (default HOME/inbox)")
    run.add_argument("--http", help="listen address HOST:PORT (default 127.0.0.1:8080)")
    serve = add("serve", "the HTTP API alone")
    serve.add_argument("--http", help="listen address HOST:PORT (default 127.0.0.1:8080)")
    ingest = add("ingest", "the folder ingest daemon alone")
    ingest.add_argument("--watch", type=Path, help="watched inbox (default HOME/inbox)")
    imp = add("import", "bulk-import files and folders (left in place)")
    imp.add_argument("paths", nargs="+", type=Path)
    imp.add_argument("--no-progress", action="store_true")
    db = add("db", "database administration")
    db.add_argument("action", choices=["init", "sweep"])
    add("config", "print the effective settings, secrets masked")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"home": getattr(args, "home", None), "watch": getattr(args, "watch", None)}
    if getattr(args, "http", None):
        host, _, port = args.http.rpartition(":")
        if not host or not port.isdigit():
            raise CloudPacsError(f"--http must be HOST:PORT, not {args.http!r}")
        out.update(http_host=host, http_port=int(port))
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, _overrides(args))
    except CloudPacsError as exc:
        print(f"cloudpacs: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    if args.command == "config":
        print(json.dumps(settings.masked(), indent=2))
        return 0
    try:
        return asyncio.run(_dispatch(args, settings))
    except CloudPacsError as exc:
        print(f"cloudpacs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "db":
        async with open_runtime(settings, sweep_periodically=False) as runtime:
            if args.action == "init":
                for note in runtime.schema_notes:
                    print(note)
            else:
                report = await sweep(runtime.store, settings.orphan_grace_seconds)
                print(report)
        return 0
    if command == "import":
        async with open_runtime(settings, sweep_periodically=False) as runtime:
            summary = await import_paths(
                runtime.ingestor, args.paths, settings.ingest_concurrency, not args.no_progress
            )
        print(summary.render())
        return 0 if not summary.counts["failed"] else 1
    async with open_runtime(settings) as runtime, contextlib.AsyncExitStack() as stack:
        if command in ("run", "serve"):
            await stack.enter_async_context(_http(runtime))
        if command in ("run", "ingest"):
            daemon = FolderDaemon(settings, runtime.ingestor)
            await daemon.start()
            stack.push_async_callback(daemon.stop)
        log.info("cloudpacs.ready", extra={"command": command})
        await _until_signalled()
        log.info("cloudpacs.stopping")
    return 0


@contextlib.asynccontextmanager
async def _http(runtime: Runtime) -> AsyncIterator[None]:
    settings = runtime.settings
    runner = web.AppRunner(create_app(runtime.services()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    log.info("http.listening", extra={"host": settings.http_host, "port": settings.http_port})
    try:
        yield
    finally:
        await runner.cleanup()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
