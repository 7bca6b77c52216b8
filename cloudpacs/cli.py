"""Command line: run, serve, ingest, import, migrate, db init|sweep, config, aws, tokens,
audit."""

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
from cloudpacs.aws.backfill import backfill
from cloudpacs.aws.clients import AwsClients, make_clients
from cloudpacs.aws.objects import ObjectIngest
from cloudpacs.aws.wiring import WiringPlan, wire_bucket
from cloudpacs.cli_admin import export_audit, manage_tokens
from cloudpacs.config import Settings, load_settings
from cloudpacs.daemon.queues import SqsDaemon
from cloudpacs.daemon.service import FolderDaemon
from cloudpacs.errors import CloudPacsError
from cloudpacs.http.app import create_app
from cloudpacs.importer import import_paths
from cloudpacs.logs import setup_logging
from cloudpacs.migrate.migration import MigrateOptions, Migration
from cloudpacs.migrate.source import DicomwebSource, parse_header
from cloudpacs.notify import sd_notify
from cloudpacs.projects import check_project_name
from cloudpacs.runtime import Runtime, open_runtime
from cloudpacs.storage.audit import AuditStore
from cloudpacs.storage.checkpoints import CheckpointStore
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.sharding import shard_archive
from cloudpacs.storage.sweep import sweep

log = logging.getLogger("cloudpacs")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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

    run = add("run", "ingest daemons and HTTP API in one process")
    run.add_argument("--watch", type=Path, help="watched inbox (default HOME/inbox)")
    serve = add("serve", "the HTTP API alone")
    for p in (run, serve):
        p.add_argument("--http", help="listen address HOST:PORT (default 127.0.0.1:8080)")
        p.add_argument(
            "--insecure",
            action="store_true",
            default=None,
            help="serve WITHOUT authentication, even off loopback (never on a network)",
        )
    ingest = add("ingest", "the ingest daemons alone (watched folder, SQS queues)")
    ingest.add_argument("--watch", type=Path, help="watched inbox (default HOME/inbox)")
    for p in (run, ingest):
        p.add_argument(
            "--sqs-queue",
            action="append",
            dest="sqs_queues",
            metavar="URL",
            help="SQS queue URL to consume S3 notifications from (repeatable)",
        )
    imp = add("import", "bulk-import files, folders or s3://bucket/prefix (left in place)")
    imp.add_argument("paths", nargs="+", help="files, folders or s3:// URLs")
    imp.add_argument("--no-progress", action="store_true")
    mig = add("migrate", "copy a whole archive from a DICOMweb server (resumable, verified)")
    mig.add_argument(
        "--from-dicomweb",
        dest="source",
        required=True,
        metavar="URL",
        help="DICOMweb service root, e.g. http://orthanc:8042/dicom-web",
    )
    mig.add_argument("--concurrency", type=int, help="instance transfers at a time")
    mig.add_argument("--project", help="research project the copied instances belong to")
    mig.add_argument("--report", type=Path, help="reconciliation report (JSON) path")
    mig.add_argument(
        "--header",
        action="append",
        dest="headers",
        default=[],
        metavar="'NAME: VALUE'",
        help="HTTP header sent to the source, e.g. 'Authorization: Bearer ...' (repeatable)",
    )
    mig.add_argument("--limit-studies", type=int, metavar="N", help="copy at most N studies")
    mig.add_argument("--no-progress", action="store_true")
    db = add("db", "database administration")
    db.add_argument("action", choices=["init", "sweep"])
    db.add_argument(
        "--sharded", action="store_true", help="init: also shard the archive (through mongos)"
    )
    add("config", "print the effective settings, secrets masked")
    tokens = add("tokens", "API tokens: create (shown once), list, revoke")
    tokens.add_argument("action", choices=["create", "list", "revoke"])
    tokens.add_argument("token_id", nargs="?", help="revoke: the token id")
    tokens.add_argument("--subject", help="create: who the token is for")
    tokens.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="PROJECT=ROLE",
        help="create: a role (reader, contributor, admin) in a project, * for all (repeatable)",
    )
    tokens.add_argument("--days", type=float, default=90.0, help="create: expiry (default 90)")
    tokens.add_argument("--default-project", help="create: where its STOW-RS stores by default")
    tokens.add_argument("--description", default="")
    audit = add("audit", "query the audit trail; CSV or JSON lines")
    audit.add_argument("--user")
    audit.add_argument("--study")
    audit.add_argument("--action", dest="audit_action", help="e.g. search, retrieve, store")
    audit.add_argument("--since", help="ISO time or date, inclusive (UTC unless given)")
    audit.add_argument("--until", help="ISO time or date, exclusive")
    audit.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    audit.add_argument("--output", type=Path, help="file to write (default stdout)")
    aws = add("aws", "AWS set-up")
    aws.add_argument("action", choices=["wire-bucket"])
    aws.add_argument("--bucket", required=True)
    aws.add_argument("--queue", required=True, help="queue name (its DLQ is QUEUE-dlq)")
    aws.add_argument("--max-receive-count", type=int, default=5)
    aws.add_argument("--visibility-timeout", type=int, default=300)
    aws.add_argument("--dry-run", action="store_true")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "home": getattr(args, "home", None),
        "watch": getattr(args, "watch", None),
        "sqs_queues": getattr(args, "sqs_queues", None),
        "insecure": getattr(args, "insecure", None),
    }
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
        async with open_runtime(settings, sweep_periodically=False, start_parser=False) as runtime:
            if args.action == "init":
                notes = list(runtime.schema_notes)
                if args.sharded:
                    notes += await shard_archive(runtime.database)
                for note in notes:
                    print(note)
            else:
                report = await sweep(runtime.store, settings.orphan_grace_seconds, full=True)
                print(report)
        return 0
    if command == "aws":
        return await asyncio.to_thread(_wire_bucket, args, settings)
    if command in ("tokens", "audit"):  # nothing to parse: no parser processes
        async with open_runtime(settings, sweep_periodically=False, start_parser=False) as runtime:
            if command == "tokens":
                return await manage_tokens(args, runtime.tokens)
            return await export_audit(args, AuditStore(runtime.database))
    if command == "import":
        async with open_runtime(settings, sweep_periodically=False) as runtime:
            return await _import(args, runtime)
    stop = _stop_on_signal()  # before start-up: see _stop_on_signal
    if command == "migrate":
        options = _migrate_options(args, settings)  # bad flags fail before start-up
        async with open_runtime(settings, sweep_periodically=False) as runtime:
            return await _migrate(args, options, runtime, stop)
    async with open_runtime(settings) as runtime, contextlib.AsyncExitStack() as stack:
        if command in ("run", "serve"):
            _warn_if_open(settings)
            await stack.enter_async_context(_http(runtime, settings.http_port))
        elif settings.metrics_port is not None:
            await stack.enter_async_context(_http(runtime, settings.metrics_port, ops_only=True))
        if command in ("run", "ingest"):
            daemon = FolderDaemon(settings, runtime.ingestor)
            await daemon.start()
            stack.push_async_callback(daemon.stop)
            if settings.sqs_queues:
                clients = _aws(settings)
                queues = SqsDaemon(
                    settings, clients.sqs, clients.s3, runtime.ingestor, runtime.metrics
                )
                queues.start()
                stack.push_async_callback(queues.stop)
        log.info("cloudpacs.ready", extra={"command": command})
        sd_notify(settings.notify_socket, "READY=1")
        await stop.wait()
        log.info("cloudpacs.stopping")
        sd_notify(settings.notify_socket, "STOPPING=1")
    return 0


def _aws(settings: Settings) -> AwsClients:
    return make_clients(
        settings.aws_region, settings.aws_endpoint_url, 2 * settings.ingest_concurrency + 4
    )


def _wire_bucket(args: argparse.Namespace, settings: Settings) -> int:
    clients = _aws(settings)
    plan = WiringPlan(
        bucket=args.bucket,
        queue=args.queue,
        max_receive_count=args.max_receive_count,
        visibility_timeout_seconds=args.visibility_timeout,
    )
    wire_bucket(clients.sqs, clients.s3, plan, dry_run=args.dry_run)
    for action in plan.actions:
        print(("would: " if args.dry_run else "") + action)
    if not args.dry_run:
        print(f"queue: {plan.queue_url}\ndead-letter queue: {plan.dlq_url}")
    return 0


async def _import(args: argparse.Namespace, runtime: Runtime) -> int:
    settings = runtime.settings
    progress = not args.no_progress
    urls = [p for p in args.paths if p.startswith("s3://")]
    paths = [Path(p) for p in args.paths if not p.startswith("s3://")]
    failed = 0
    if paths:
        summary = await import_paths(
            runtime.ingestor,
            paths,
            settings.ingest_concurrency,
            progress,
            settings.project_rules.importer,
        )
        print(summary.render())
        failed += summary.counts["failed"]
    if urls:
        clients = _aws(settings)
        objects = ObjectIngest(
            clients.s3,
            runtime.ingestor,
            settings.home / "tmp",
            settings.max_upload_bytes,
            "import",
            settings.project_rules,
        )
        checkpoints = CheckpointStore(runtime.database)
        for url in urls:
            counts, rejected = await backfill(
                url, clients.s3, objects, checkpoints, settings.ingest_concurrency, progress
            )
            print(
                f"{url}: stored: {counts['stored']}  duplicate: {counts['duplicate']}  "
                f"rejected: {counts['rejected']}"
            )
            for name, reason in rejected:
                print(f"  rejected {name}: {reason}")
    return 0 if not failed else 1


def _migrate_options(args: argparse.Namespace, settings: Settings) -> MigrateOptions:
    concurrency = args.concurrency or settings.ingest_concurrency
    if concurrency < 1 or (args.limit_studies is not None and args.limit_studies < 1):
        raise CloudPacsError("--concurrency and --limit-studies must be at least 1")
    return MigrateOptions(
        source=args.source,
        tmp_dir=settings.home / "tmp",
        max_bytes=settings.max_upload_bytes,
        concurrency=concurrency,
        project=check_project_name(args.project, "--project") if args.project else None,
        headers=dict(parse_header(h) for h in args.headers),
        limit_studies=args.limit_studies,
        progress=not args.no_progress,
    )


async def _migrate(
    args: argparse.Namespace, options: MigrateOptions, runtime: Runtime, stop: asyncio.Event
) -> int:
    """Run the migration until done or signalled; then write and summarise the report."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    path = args.report or runtime.settings.home / "reports" / f"migrate-{stamp}.json"
    async with DicomwebSource(options.source, options.headers, options.concurrency) as source:
        migration = Migration(
            options, source, runtime.ingestor, runtime.store, CheckpointStore(runtime.database)
        )
        task = asyncio.create_task(migration.run())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # raises what stopped the migration at its start (SourceError)
    report = migration.report
    await asyncio.to_thread(report.write, path)
    print(report.render())
    print(f"report: {path}")
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


@contextlib.asynccontextmanager
async def _http(runtime: Runtime, port: int, ops_only: bool = False) -> AsyncIterator[None]:
    settings = runtime.settings
    app = create_app(runtime.services(), ops_only=ops_only)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.drain_seconds)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, port)
    await site.start()
    log.info("http.listening", extra={"host": settings.http_host, "port": port})
    try:
        yield
    finally:
        await runner.cleanup()


def _warn_if_open(settings: Settings) -> None:
    if settings.auth_enabled or settings.loopback_only:
        return
    banner = (
        f"WARNING: cloudpacs serves {settings.http_host}:{settings.http_port} WITHOUT "
        "AUTHENTICATION (--insecure): anyone who can reach it can read and change all data"
    )
    print("!" * len(banner) + "\n" + banner + "\n" + "!" * len(banner), file=sys.stderr)
    log.warning("http.insecure", extra={"host": settings.http_host})


def _stop_on_signal() -> asyncio.Event:
    """An event SIGTERM or SIGINT sets. Installed before start-up, so that a signal during
    start-up stops us cleanly (the embedded FerretDB, in its own session, would otherwise
    outlive us); after the first signal a second one acts at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        stop.set()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, signalled)
    return stop
