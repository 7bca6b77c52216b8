"""Ingest phases of perf/bench_core.py: folder ingest into a watched inbox, STOW-RS at several
client counts, and what the stored archive looks like (counts, query pushdown, disk use).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_context import JSON_ACCEPT, Context, Plan, log
from benchlib import (
    Archive,
    ResourceWatch,
    percentile,
    start_archive,
)
from corpus import Corpus
from pymongo import MongoClient

NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"

NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"


# ---- folder ingest ----------------------------------------------------------------------
def files_left(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def wait_stored(
    client: MongoClient[dict[str, Any]], database: str, expected: int, inbox: Path, deadline: float
) -> float:
    """Seconds (perf_counter) at which all instances are visible and the inbox is empty."""
    instances = client[database]["instances"]
    while time.perf_counter() < deadline:
        if instances.estimated_document_count() >= expected and files_left(inbox) == 0:
            return time.perf_counter()
        time.sleep(0.25)
    raise TimeoutError(
        f"folder ingest not finished: {instances.estimated_document_count()}"
        f"/{expected} stored, {files_left(inbox)} files in the inbox"
    )


def folder_ingest(ctx: Context, archive: Archive, home: Path) -> dict[str, Any]:
    corpus, inbox = ctx.corpus, home / "inbox"
    client: MongoClient[dict[str, Any]] = MongoClient(archive.db_uri)
    try:
        with ResourceWatch(archive.pids) as watch:
            started = time.perf_counter()
            shutil.copytree(corpus.folder, inbox, dirs_exist_ok=True)
            copied = time.perf_counter() - started
            deadline = started + ctx.plan.phase_time_limit
            done = wait_stored(client, archive.database, len(corpus.instances), inbox, deadline)
    finally:
        client.close()
    seconds = done - started
    failed = files_left(home / "failed")
    return {
        "instances": len(corpus.instances),
        "bytes": corpus.total_bytes,
        "seconds": round(seconds, 2),
        "copy_seconds": round(copied, 2),
        "instances_per_s": round(len(corpus.instances) / seconds, 1),
        "mb_per_s": round(corpus.total_bytes / 1e6 / seconds, 2),
        "failed_files": failed,
        "resources": watch.result,
    }


def check_archive(root: str, corpus: Corpus) -> dict[str, Any]:
    """QIDO all studies: the study count and the sum of their instance counts."""
    studies = http_json(f"{root}/studies?limit=10000")
    total = sum(s.get(NUMBER_OF_STUDY_RELATED_INSTANCES, {}).get("Value", [0])[0] for s in studies)
    expected_studies = len({i["study"] for i in corpus.instances})
    ok = total == len(corpus.instances) and len(studies) == expected_studies
    return {"studies": len(studies), "instances": total, "ok": ok}


@contextlib.contextmanager
def embedded_sqlite(home: Path, archive: Archive) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the embedded FerretDB's SQLite file of the archive's
    database; None when the database file is not ours to read."""
    path = home / "db" / f"{archive.database}.sqlite"
    if not archive.embedded or not path.exists():
        yield None
        return
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        yield conn


def id_lookup_indexes(home: Path, archive: Archive) -> int | None:
    """How many SQLite indexes cloudpacs added for FerretDB's `_id` lookups (embedded mode);
    None when the database file is not ours to read."""
    with embedded_sqlite(home, archive) as conn:
        if conn is None:
            return None
        rows = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE ?",
            ("%cloudpacs_id_lookup%",),
        ).fetchone()
    return int(rows[0])


def storage_facts(uri: str, database: str) -> dict[str, Any]:
    """Collection sizes, and whether FerretDB pushes the read paths' filters down to SQLite."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        db = client[database]
        counts = {
            name: db[name].estimated_document_count()
            for name in ("instances", "series", "studies", "fs.files", "fs.chunks")
        }
        doc = db["instances"].find_one({}, {"study": 1, "file_id": 1})
        assert doc is not None
        plans = {
            "instances by study": ("instances", {"study": doc["study"]}),
            "fs.chunks by files_id": ("fs.chunks", {"files_id": doc["file_id"]}),
            "instances by _id": ("instances", {"_id": doc["_id"]}),
        }
        pushdown = {
            label: db.command("explain", {"find": coll, "filter": flt}).get("filterPushdown")
            for label, (coll, flt) in plans.items()
        }
    finally:
        client.close()
    return {"documents": counts, "filter_pushdown": pushdown}


def http_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": JSON_ACCEPT})
    with urllib.request.urlopen(request, timeout=60) as answer:
        body = answer.read()
    return json.loads(body) if body else []


# ---- STOW-RS ----------------------------------------------------------------------------
@dataclass
class StowStats:
    latencies: list[float] = field(default_factory=list)
    stored: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def multipart_bodies(files: Sequence[Path], batch: int) -> tuple[str, list[bytes]]:
    boundary = uuid.uuid4().hex
    bodies = []
    for start in range(0, len(files), batch):
        pieces = []
        for path in files[start : start + batch]:
            pieces.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            pieces.append(path.read_bytes())
            pieces.append(b"\r\n")
        pieces.append(f"--{boundary}--\r\n".encode())
        bodies.append(b"".join(pieces))
    return boundary, bodies


async def stow_post(
    session: aiohttp.ClientSession, url: str, boundary: str, body: bytes, stats: StowStats
) -> None:
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": JSON_ACCEPT,
    }
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as answer:
        payload = await answer.json(content_type=None)
        stats.latencies.append(time.perf_counter() - started)
        if answer.status not in (200, 202, 409):
            stats.errors[f"HTTP {answer.status}"] += 1
            return
    stats.stored += len(payload.get("00081199", {}).get("Value", []))
    stats.failed += len(payload.get("00081198", {}).get("Value", []))


async def stow_clients(
    url: str, boundary: str, bodies: list[bytes], clients: int, deadline: float
) -> StowStats:
    stats, queue = StowStats(), deque(bodies)
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while queue and time.perf_counter() < deadline:
                try:
                    await stow_post(session, url, boundary, queue.popleft(), stats)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    stats.errors[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return stats


def stow_level(
    url: str, pids: dict[str, int], files: Sequence[Path], clients: int, plan: Plan
) -> dict[str, Any]:
    boundary, bodies = multipart_bodies(files, plan.stow_batch)
    with ResourceWatch(pids) as watch:
        started = time.perf_counter()
        stats = asyncio.run(
            stow_clients(url, boundary, bodies, clients, started + plan.phase_time_limit)
        )
        seconds = time.perf_counter() - started
    stored_bytes = sum(p.stat().st_size for p in files[: stats.stored])
    return {
        "clients": clients,
        "instances_per_request": plan.stow_batch,
        "stored": stats.stored,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "seconds": round(seconds, 2),
        "instances_per_s": round(stats.stored / seconds, 1),
        "mb_per_s": round(stored_bytes / 1e6 / seconds, 2),
        "request_p50_ms": round(1000 * percentile(stats.latencies, 50), 1),
        "request_p99_ms": round(1000 * percentile(stats.latencies, 99), 1),
        "resources": watch.result,
    }


def stow_phase(ctx: Context) -> list[dict[str, Any]]:
    files = ctx.corpus.files[: ctx.plan.stow_instances]
    levels = []
    for clients in ctx.plan.stow_clients:
        database = f"stow_c{clients}"
        home = ctx.run_dir / f"home-{database}"
        log(f"STOW-RS: {len(files)} instances, {clients} client(s), fresh database {database}")
        archive = start_archive("serve", home, database, ctx.ferretdb)
        try:
            url = f"{archive.server.base}/dicomweb/studies"
            level = stow_level(url, archive.pids, files, clients, ctx.plan)
        finally:
            archive.stop()
        if archive.embedded:
            shutil.rmtree(home, ignore_errors=True)
        else:
            drop_database(archive.db_uri, database)
        log(f"  -> {level['instances_per_s']} instances/s, {level['mb_per_s']} MB/s")
        levels.append(level)
    return levels


def drop_database(uri: str, database: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        client.drop_database(database)
    finally:
        client.close()


def disk_usage(files: Iterable[Path], dicom_bytes: int) -> dict[str, Any]:
    """Bytes the files take on disk (allocated blocks, and apparent sizes), and that per GB
    of DICOM stored in them."""
    paths = [p for p in files if p.is_file()]
    allocated = sum(p.stat().st_blocks * 512 for p in paths)
    apparent = sum(p.stat().st_size for p in paths)
    return {
        "files": len(paths),
        "bytes_on_disk": allocated,
        "apparent_bytes": apparent,
        "dicom_bytes": dicom_bytes,
        "disk_bytes_per_gb_stored": round(allocated / dicom_bytes * 1e9) if dicom_bytes else None,
    }


def sqlite_files(folder: Path, database: str) -> list[Path]:
    """FerretDB's SQLite backend keeps each database in `<database>.sqlite` (+ -wal, -shm)."""
    return sorted(folder.glob(f"{database}.sqlite*"))


def stored_files(folder: Path) -> list[Path]:
    """The files of a directory file store (cloudpacs.storage.directory_files), if any."""
    return sorted(path for path in folder.rglob("*") if path.is_file())
