"""Benchmark of the archive core on this machine: folder ingest, STOW-RS, QIDO-RS, WADO-RS,
resource use, and FerretDB's own raw insert rate as the ceiling.

    .venv/bin/python perf/bench_core.py            # full run (1,200 instances)
    .venv/bin/python perf/bench_core.py --quick    # smoke run (200 instances, few requests)
    .venv/bin/python perf/bench_core.py --with-orthanc   # same figures for Orthanc, as ratios

One FerretDB (SQLite) is started on a free loopback port under perf/out/run-*/; every phase
starts its own `cloudpacs run|serve` against a fresh database in it and stops it by PID.
Results: perf/out/results-core.json (or --out) and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import bson
import gridfs
from benchlib import (
    OUT,
    REPO,
    Archive,
    ResourceWatch,
    Server,
    fmt,
    machine,
    percentile,
    run_ab,
    running,
    start_archive,
    start_ferretdb,
)
from bson import ObjectId
from corpus import Corpus, CorpusParams, ensure_corpus
from orthanc_server import orthanc_versions, start_orthanc
from pymongo import MongoClient

DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"


@dataclass(frozen=True)
class Plan:
    """How much work each phase does (all bounded in count and in time)."""

    instances: int = 1000
    patients: int = 20
    seed: int = 7
    stow_instances: int = 300
    stow_batch: int = 10
    stow_clients: tuple[int, ...] = (1, 4, 16)
    qido_clients: tuple[int, ...] = (1, 16, 64)
    qido_requests: tuple[int, ...] = (100, 300, 600)
    wado_clients: tuple[int, ...] = (1, 16)
    wado_instance_requests: tuple[int, ...] = (50, 200)
    metadata_requests: tuple[int, ...] = (100, 400)
    series_clients: tuple[int, ...] = (1,)
    series_max: int = 200
    # seconds one ab run aims at; slow URLs get fewer requests (never fewer than clients)
    ab_time_limit: int = 10
    ab_max_seconds: int = 240
    phase_time_limit: float = 900.0
    ceiling_docs: int = 1000
    ceiling_files: int = 200
    ceiling_threads: int = 8

    @property
    def corpus_params(self) -> CorpusParams:
        return CorpusParams(self.instances, self.patients, self.seed)


QUICK = Plan(
    instances=200,
    stow_instances=100,
    qido_requests=(30, 100, 200),
    wado_instance_requests=(20, 60),
    metadata_requests=(30, 100),
    series_max=12,
    ab_time_limit=10,
    phase_time_limit=300.0,
    ceiling_docs=200,
    ceiling_files=40,
)


@dataclass
class Context:
    plan: Plan
    corpus: Corpus
    run_dir: Path
    ferretdb: Server | None  # None: every cloudpacs runs its embedded FerretDB
    results: dict[str, Any] = field(default_factory=dict)
    sample_doc: dict[str, Any] | None = None


@dataclass(frozen=True)
class Target:
    """A DICOMweb server under test: its service root URL and the processes behind it."""

    name: str
    root: str
    pids: dict[str, int]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


def id_lookup_indexes(home: Path, archive: Archive) -> int | None:
    """How many SQLite indexes cloudpacs added for FerretDB's `_id` lookups (embedded mode);
    None when the database file is not ours to read."""
    path = home / "db" / f"{archive.database}.sqlite"
    if not archive.embedded or not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
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


# ---- QIDO-RS ----------------------------------------------------------------------------
def typical_study(corpus: Corpus, modality: str = "CT") -> dict[str, Any]:
    """The study of `modality` with the median instance count, and one of its series."""
    counts = Counter(i["study"] for i in corpus.instances if i["modality"] == modality)
    if not counts:
        counts = Counter(i["study"] for i in corpus.instances)
    ordered = sorted(counts, key=lambda s: (counts[s], s))
    study = ordered[len(ordered) // 2]
    members = [i for i in corpus.instances if i["study"] == study]
    series = Counter(i["series"] for i in members).most_common(1)[0][0]
    return {"study": study, "series": series, "instances": members}


def qido_queries(corpus: Corpus) -> dict[str, str]:
    first = corpus.instances[0]
    family = first["patient_name"].split("^")[0]
    study = typical_study(corpus)["study"]
    dates = sorted(i["study_date"] for i in corpus.instances)
    low, high = dates[len(dates) // 4], dates[len(dates) // 2]
    return {
        "studies?PatientID (exact)": f"/studies?PatientID={first['patient_id']}",
        "studies?PatientName (wildcard)": f"/studies?PatientName={family[:3]}*",
        "studies?StudyDate (range)": f"/studies?StudyDate={low}-{high}",
        "studies?ModalitiesInStudy": "/studies?ModalitiesInStudy=MR",
        "study/series": f"/studies/{study}/series",
        "study/instances": f"/studies/{study}/instances",
    }


def timed_get(url: str, accept: str, timeout: float = 600) -> tuple[float, int]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        size = len(answer.read())
    return time.perf_counter() - started, size


def single_latency(url: str, accept: str) -> float:
    """One warm-up request, then the best of two (or the warm-up alone when it is slow)."""
    first, _ = timed_get(url, accept)
    if first > 2.0:
        return first
    return min(timed_get(url, accept)[0] for _ in range(2))


@dataclass(frozen=True)
class Load:
    """One ab measurement: requests scaled down for slow URLs so each stays near budget."""

    url: str
    accept: str
    clients: int
    requests: int
    keepalive: bool = True


def run_load(ctx: Context, load: Load, single: float) -> dict[str, Any]:
    budget = ctx.plan.ab_time_limit
    requests = min(load.requests, max(load.clients, int(budget / max(single, 1e-3))))
    # `clients` requests at once take about clients x single on a saturated server
    limit = min(ctx.plan.ab_max_seconds, max(6 * budget, int(2 * load.clients * single) + 15))
    result = run_ab(
        load.url,
        requests,
        load.clients,
        ctx.run_dir / "ab",
        headers=[f"Accept: {load.accept}"],
        time_limit=limit,
        keepalive=load.keepalive,
        request_timeout=limit,
    )
    return {"single_request_ms": round(1000 * single, 1), **result.as_dict()}


def qido_phase(ctx: Context, target: Target) -> list[dict[str, Any]]:
    rows = []
    levels = list(zip(ctx.plan.qido_clients, ctx.plan.qido_requests, strict=True))
    for name, path in qido_queries(ctx.corpus).items():
        url = f"{target.root}{path}"
        matches = len(http_json(url))
        single = single_latency(url, JSON_ACCEPT)
        for clients, requests in levels:
            row = run_load(ctx, Load(url, JSON_ACCEPT, clients, requests), single)
            rows.append({"query": name, "path": path, "matches": matches, **row})
            log(
                f"QIDO {name} c={clients} n={row['requests']}: p50 {row['p50_ms']:.1f} ms, "
                f"p99 {row['p99_ms']:.1f} ms, {row['rps']} req/s {row['error']}"
            )
    return rows


# ---- WADO-RS ----------------------------------------------------------------------------
def instance_url(root: str, item: dict[str, Any]) -> str:
    return f"{root}/studies/{item['study']}/series/{item['series']}/instances/{item['sop']}"


def wado_instances(ctx: Context, target: Target, study: dict[str, Any]) -> list[dict[str, Any]]:
    """Streamed answers have no Content-Length: no keep-alive, ab reads until close."""
    item = study["instances"][0]
    url = instance_url(target.root, item)
    single = single_latency(url, DICOM_ACCEPT)
    rows = []
    levels = zip(ctx.plan.wado_clients, ctx.plan.wado_instance_requests, strict=True)
    for clients, requests in levels:
        row = run_load(ctx, Load(url, DICOM_ACCEPT, clients, requests, False), single)
        rows.append({"instance_bytes": item["size"], **row})
        log(
            f"WADO instance c={clients} n={row['requests']}: {row['rps']} req/s, "
            f"{row['mb_per_s']} MB/s, p50 {row['p50_ms']:.1f} ms {row['error']}"
        )
    return rows


def wado_metadata(ctx: Context, target: Target, study: dict[str, Any]) -> list[dict[str, Any]]:
    url = f"{target.root}/studies/{study['study']}/series/{study['series']}/metadata"
    single = single_latency(url, JSON_ACCEPT)
    instances = sum(1 for i in study["instances"] if i["series"] == study["series"])
    rows = []
    for clients, requests in zip(ctx.plan.wado_clients, ctx.plan.metadata_requests, strict=True):
        row = run_load(ctx, Load(url, JSON_ACCEPT, clients, requests, False), single)
        rows.append({"series_instances": instances, **row})
        log(
            f"WADO series metadata c={clients} n={row['requests']}: p50 {row['p50_ms']:.1f} ms, "
            f"p99 {row['p99_ms']:.1f} ms {row['error']}"
        )
    return rows


async def fetch_all(
    urls: Sequence[str], clients: int, deadline: float, headers: dict[str, str]
) -> tuple[int, list[float], int]:
    """GET URLs until all are done or `deadline` passes (each client finishes its current
    one); bytes received, latencies, errors."""
    queue, latencies = deque(urls), []
    received = errors = 0
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

        async def worker() -> None:
            nonlocal received, errors
            while queue and time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.get(queue.popleft()) as answer:
                    async for chunk in answer.content.iter_chunked(1 << 20):
                        received += len(chunk)
                    errors += answer.status != 200
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return received, latencies, errors


def median_series(corpus: Corpus) -> list[tuple[str, str, int]]:
    """(study, series, stored bytes) of every series, those nearest the median size first."""
    sizes: Counter[tuple[str, str]] = Counter()
    for item in corpus.instances:
        sizes[(item["study"], item["series"])] += item["size"]
    ordered = sorted(sizes, key=lambda k: (sizes[k], k))
    middle = sizes[ordered[len(ordered) // 2]]
    ordered.sort(key=lambda k: (abs(sizes[k] - middle), k))
    return [(st, se, sizes[(st, se)]) for st, se in ordered]


def wado_series(ctx: Context, target: Target) -> list[dict[str, Any]]:
    chosen = median_series(ctx.corpus)[: ctx.plan.series_max]
    urls = [f"{target.root}/studies/{st}/series/{se}" for st, se, _ in chosen]
    rows = []
    for clients in ctx.plan.series_clients:
        started = time.perf_counter()
        received, latencies, errors = asyncio.run(
            fetch_all(urls, clients, started + ctx.plan.ab_time_limit, {"Accept": DICOM_ACCEPT})
        )
        seconds = time.perf_counter() - started
        rows.append(
            {
                "clients": clients,
                "series": len(latencies),
                "errors": errors,
                "bytes": received,
                "seconds": round(seconds, 2),
                "stored_bytes_of_series": sum(size for _, _, size in chosen[: len(latencies)]),
                "mb_per_s": round(received / 1e6 / seconds, 2),
                "series_p50_ms": round(1000 * percentile(latencies, 50), 1),
                "series_p99_ms": round(1000 * percentile(latencies, 99), 1),
            }
        )
        log(f"WADO series c={clients}: {rows[-1]['mb_per_s']} MB/s over {len(latencies)} series")
    return rows


def wado_phase(ctx: Context, target: Target) -> dict[str, Any]:
    study = typical_study(ctx.corpus)
    with ResourceWatch(dict(target.pids)) as watch:
        out: dict[str, Any] = {
            "series_metadata": wado_metadata(ctx, target, study),
            "instance": wado_instances(ctx, target, study),
            "series": wado_series(ctx, target),
        }
    out["resources"] = watch.result
    return out


# ---- FerretDB ceiling -------------------------------------------------------------------
def sample_document(uri: str, database: str) -> dict[str, Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        doc = client[database]["instances"].find_one({"modality": "CT"})
    finally:
        client.close()
    if doc is None:
        raise RuntimeError("no stored CT instance to model the ceiling documents on")
    return doc


def timed_ops(op: Callable[[int], None], count: int, threads: int) -> float:
    started = time.perf_counter()
    if threads == 1:
        for i in range(count):
            op(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(op, range(count)))
    return time.perf_counter() - started


def ceiling_phase(ctx: Context, template: dict[str, Any]) -> dict[str, Any]:
    """On the shared FerretDB (external mode) or on a fresh one of its own."""
    ferretdb = ctx.ferretdb or start_ferretdb(ctx.run_dir / "ferretdb-ceiling")
    try:
        return ceiling_measure(ctx.plan, ferretdb, template)
    finally:
        if ferretdb is not ctx.ferretdb:
            ferretdb.stop()


def ceiling_measure(plan: Plan, ferretdb: Server, template: dict[str, Any]) -> dict[str, Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        f"mongodb://127.0.0.1:{ferretdb.port}/", maxPoolSize=plan.ceiling_threads + 2
    )
    db = client["ceiling"]
    bucket = gridfs.GridFSBucket(db)
    payload = bytes(512 * 1024)
    doc_bytes = len(bson.encode(template))
    lock = threading.Lock()
    counter = [0]

    def next_id() -> str:
        with lock:
            counter[0] += 1
            return f"{template['_id']}.{counter[0]}"

    def insert(_: int) -> None:
        db["docs"].insert_one({**template, "_id": next_id(), "file_id": ObjectId()})

    def upload(_: int) -> None:
        bucket.upload_from_stream(next_id(), payload)

    def both(i: int) -> None:
        upload(i)
        insert(i)

    out: dict[str, Any] = {"document_bytes": doc_bytes, "file_bytes": len(payload)}
    try:
        with ResourceWatch({"ferretdb": ferretdb.pid}) as watch:
            for threads in (1, plan.ceiling_threads):
                docs_s = timed_ops(insert, plan.ceiling_docs, threads)
                files_s = timed_ops(upload, plan.ceiling_files, threads)
                both_s = timed_ops(both, plan.ceiling_files, threads)
                out[f"threads_{threads}"] = {
                    "insert_one_docs_per_s": round(plan.ceiling_docs / docs_s, 1),
                    "gridfs_512k_files_per_s": round(plan.ceiling_files / files_s, 1),
                    "gridfs_512k_mb_per_s": round(
                        plan.ceiling_files * len(payload) / 1e6 / files_s, 1
                    ),
                    "file_plus_doc_per_s": round(plan.ceiling_files / both_s, 1),
                }
                log(f"ceiling threads={threads}: {out[f'threads_{threads}']}")
        out["resources"] = watch.result
    finally:
        client.drop_database("ceiling")
        client.close()
    return out


# ---- Orthanc side by side (--with-orthanc) ----------------------------------------------
def orthanc_stow(ctx: Context) -> list[dict[str, Any]]:
    files = ctx.corpus.files[: ctx.plan.stow_instances]
    levels = []
    for clients in ctx.plan.stow_clients:
        log(f"Orthanc STOW-RS: {len(files)} instances, {clients} client(s), fresh storage")
        with running(start_orthanc(ctx.run_dir / f"orthanc-stow-c{clients}")) as server:
            url = f"{server.base}/dicom-web/studies"
            levels.append(stow_level(url, {"orthanc": server.pid}, files, clients, ctx.plan))
        log(f"  -> {levels[-1]['instances_per_s']} instances/s")
    return levels


def orthanc_phase(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"stow": orthanc_stow(ctx)}
    with running(start_orthanc(ctx.run_dir / "orthanc-main")) as server:
        out["versions"] = orthanc_versions(server)
        target = Target("orthanc", f"{server.base}/dicom-web", {"orthanc": server.pid})
        log(f"Orthanc: loading the whole corpus over STOW-RS (4 clients), {out['versions']}")
        out["load"] = stow_level(
            f"{target.root}/studies", dict(target.pids), ctx.corpus.files, 4, ctx.plan
        )
        out["archive_check"] = check_archive(target.root, ctx.corpus)
        out["qido"] = qido_phase(ctx, target)
        out["wado"] = wado_phase(ctx, target)
    return out


def ratio(a: float, b: float) -> float | None:
    """a / b to three significant digits."""
    return float(f"{a / b:.3g}") if b else None


def orthanc_ratios(results: dict[str, Any]) -> dict[str, Any]:
    """cloudpacs / Orthanc: > 1 means cloudpacs is higher (better for rates, worse for ms)."""
    o = results["orthanc"]
    stow = {
        f"c{c['clients']}": ratio(c["instances_per_s"], x["instances_per_s"])
        for c, x in zip(results["stow"], o["stow"], strict=True)
    }
    qido = {
        f"{c['query']} c{c['concurrency']}": ratio(c["p50_ms"], x["p50_ms"])
        for c, x in zip(results["qido"], o["qido"], strict=True)
    }
    w, ow = results["wado"], o["wado"]
    wado = {
        f"instance c{c['concurrency']} req/s": ratio(c["rps"], x["rps"])
        for c, x in zip(w["instance"], ow["instance"], strict=True)
    }
    wado.update(
        {
            f"series c{c['clients']} MB/s": ratio(c["mb_per_s"], x["mb_per_s"])
            for c, x in zip(w["series"], ow["series"], strict=True)
        }
    )
    wado.update(
        {
            f"series metadata c{c['concurrency']} p50": ratio(c["p50_ms"], x["p50_ms"])
            for c, x in zip(w["series_metadata"], ow["series_metadata"], strict=True)
        }
    )
    return {"stow_instances_per_s": stow, "qido_p50_ms": qido, "wado": wado}


# ---- orchestration ----------------------------------------------------------------------
def folder_and_reads(ctx: Context) -> None:
    home = ctx.run_dir / "home-folder"
    log(
        f"folder ingest: {len(ctx.corpus.instances)} instances, "
        f"{ctx.corpus.total_bytes / 1e6:.0f} MB -> {home / 'inbox'}"
    )
    archive = start_archive("run", home, "folder", ctx.ferretdb)
    try:
        ctx.results["folder_ingest"] = folder_ingest(ctx, archive, home)
        log(f"  -> {ctx.results['folder_ingest']['instances_per_s']} instances/s")
        target = Target("cloudpacs", f"{archive.server.base}/dicomweb", archive.pids)
        ctx.results["archive_check"] = check_archive(target.root, ctx.corpus)
        ctx.results["storage"] = storage_facts(archive.db_uri, archive.database)
        ctx.results["storage"]["id_lookup_indexes"] = id_lookup_indexes(home, archive)
        ctx.sample_doc = sample_document(archive.db_uri, archive.database)
        log(f"  storage: {ctx.results['storage']}")
        ctx.results["qido"] = qido_phase(ctx, target)
        ctx.results["wado"] = wado_phase(ctx, target)
    finally:
        archive.stop()


def with_orthanc(ctx: Context) -> None:
    """The optional comparison must not cost the cloudpacs figures: errors are recorded."""
    try:
        ctx.results["orthanc"] = orthanc_phase(ctx)
        ctx.results["orthanc_ratios"] = orthanc_ratios(ctx.results)
    except Exception as exc:  # noqa: BLE001 - reported in the results instead
        log(f"Orthanc comparison failed: {exc!r}")
        ctx.results["orthanc_error"] = repr(exc)
        ctx.results.pop("orthanc", None)


def run_all(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    corpus = ensure_corpus(plan.corpus_params)
    run_dir = OUT / f"run-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    ferretdb = start_ferretdb(run_dir / "ferretdb") if args.external_ferretdb else None
    ctx = Context(plan, corpus, run_dir, ferretdb)
    ctx.results.update(header(plan, corpus, args))
    try:
        folder_and_reads(ctx)
        ctx.results["stow"] = stow_phase(ctx)
        log("FerretDB ceiling: raw inserts and GridFS uploads with pymongo")
        assert ctx.sample_doc is not None
        ctx.results["ceiling"] = ceiling_phase(ctx, ctx.sample_doc)
        if args.with_orthanc:
            with_orthanc(ctx)
    finally:
        if ferretdb is not None:
            ferretdb.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    ctx.results["total_seconds"] = round(time.perf_counter() - started, 1)
    return ctx.results


def dirty_files() -> int:
    """Files changed in the working tree (what is measured is the tree, not just HEAD)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "cloudpacs"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    return len(status.splitlines())


def header(plan: Plan, corpus: Corpus, args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "perf/bench_core.py", *sys.argv[1:]]),
        "git_commit": commit,
        "git_dirty_files": dirty_files(),
        "database_mode": "external FerretDB via CLOUDPACS_MONGO_URI"
        if args.external_ferretdb
        else "embedded FerretDB (cloudpacs default, one per cloudpacs process)",
        "machine": machine(),
        "plan": asdict(plan),
        "corpus": {
            "folder": str(corpus.folder.relative_to(REPO)),
            "instances": len(corpus.instances),
            "series": len({i["series"] for i in corpus.instances}),
            "studies": len({i["study"] for i in corpus.instances}),
            "patients": len({i["patient_id"] for i in corpus.instances}),
            "bytes": corpus.total_bytes,
            "modalities": dict(Counter(i["modality"] for i in corpus.instances)),
        },
    }


# ---- report -----------------------------------------------------------------------------
def resources_line(resources: dict[str, Any]) -> str:
    parts = []
    for name in ("cloudpacs", "ferretdb", "orthanc"):
        if name in resources:
            r = resources[name]
            parts.append(
                f"{name} {r['cpu_seconds']} CPU-s ({r['cpu_percent_of_one_core']}%), "
                f"peak RSS {r['peak_rss_mb']} MB"
            )
    others = resources.get("other_processes", {})
    if others.get("cpu_seconds", 0) >= 1:
        parts.append(f"OTHER USERS' processes {others['cpu_seconds']} CPU-s")
    return "; ".join(parts)


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    m, c = results["machine"], results["corpus"]
    lines.append(
        f"machine: {m['nproc']} x {m['cpu_model']}, {m['mem_total_gb']} GB, "
        f"Python {m['python']}, FerretDB {m['ferretdb']} (SQLite)"
    )
    lines.append(
        f"corpus: {c['instances']} instances ({c['modalities']}), {c['series']} series, "
        f"{c['studies']} studies, {c['patients']} patients, {c['bytes'] / 1e6:.0f} MB"
    )
    lines += report_ingest(results)
    lines += report_qido(results["qido"])
    lines += report_wado(results["wado"])
    lines += report_ceiling(results["ceiling"])
    if "orthanc" in results:
        lines += report_orthanc(results)
    lines.append(f"total wall time {results['total_seconds']} s")
    return "\n".join(lines)


def report_ingest(results: dict[str, Any]) -> list[str]:
    f = results["folder_ingest"]
    lines = [
        "",
        "INGEST                         instances/s      MB/s   seconds  notes",
        f"folder (watched inbox)         {f['instances_per_s']:>11} {f['mb_per_s']:>9} "
        f"{f['seconds']:>9}  {f['instances']} files, {f['failed_files']} failed",
        f"    {resources_line(f['resources'])}",
    ]
    for s in results["stow"]:
        lines.append(
            f"STOW-RS {s['clients']:>2} client(s) x{s['instances_per_request']}/req "
            f"{s['instances_per_s']:>11} {s['mb_per_s']:>9} {s['seconds']:>9}  "
            f"{s['stored']} stored, req p50 {s['request_p50_ms']} ms "
            f"p99 {s['request_p99_ms']} ms"
        )
        lines.append(f"    {resources_line(s['resources'])}")
    return lines


def report_qido(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "QIDO-RS                         matches  clients   p50 ms   p99 ms    req/s  fail",
    ]
    for r in rows:
        lines.append(
            f"{r['query']:<31} {r['matches']:>7} {r['concurrency']:>8} "
            f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8} {fmt(r['rps']):>8} "
            f"{r['failed'] + r['non_2xx']:>5}"
        )
    return lines


def report_wado(wado: dict[str, Any]) -> list[str]:
    lines = ["", "WADO-RS                         clients    req/s     MB/s   p50 ms   p99 ms"]
    for r in wado["instance"]:
        lines.append(
            f"instance ({r['instance_bytes'] // 1024} KB, as stored)    "
            f"{r['concurrency']:>7} {fmt(r['rps']):>8} {fmt(r['mb_per_s']):>8} "
            f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8}"
        )
    for r in wado["series"]:
        rps = r["series"] / r["seconds"] if r["seconds"] else 0.0
        lines.append(
            f"series ({r['series']} distinct)          {r['clients']:>7} {fmt(rps):>8} "
            f"{fmt(r['mb_per_s']):>8} {fmt(r['series_p50_ms']):>8} "
            f"{fmt(r['series_p99_ms']):>8}"
        )
    for r in wado["series_metadata"]:
        lines.append(
            f"series metadata ({r['series_instances']} instances)  {r['concurrency']:>7} "
            f"{fmt(r['rps']):>8} {fmt(r['mb_per_s']):>8} {fmt(r['p50_ms']):>8} "
            f"{fmt(r['p99_ms']):>8}"
        )
    lines.append(f"    {resources_line(wado['resources'])}")
    return lines


def report_ceiling(ceiling: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"FERRETDB CEILING (pymongo, {ceiling['document_bytes']} B documents, 512 KB GridFS files)",
        "threads   docs/s   files/s   file MB/s   file+doc/s",
    ]
    for key, value in ceiling.items():
        if key.startswith("threads_"):
            lines.append(
                f"{key[8:]:>7} {value['insert_one_docs_per_s']:>8} "
                f"{value['gridfs_512k_files_per_s']:>9} {value['gridfs_512k_mb_per_s']:>11} "
                f"{value['file_plus_doc_per_s']:>12}"
            )
    return lines


def report_orthanc(results: dict[str, Any]) -> list[str]:
    o, r = results["orthanc"], results["orthanc_ratios"]
    lines = [
        "",
        f"ORTHANC {o['versions']['orthanc']} + DICOMweb plugin "
        f"{o['versions']['dicomweb_plugin']} (SQLite index, files on disk)",
        f"load of the whole corpus over STOW-RS, 4 clients: {o['load']['instances_per_s']} "
        f"instances/s, {o['load']['mb_per_s']} MB/s",
        f"    {resources_line(o['load']['resources'])}",
    ]
    for s in o["stow"]:
        lines.append(
            f"STOW-RS {s['clients']:>2} client(s): {s['instances_per_s']} instances/s, "
            f"{s['mb_per_s']} MB/s (cloudpacs/Orthanc "
            f"{r['stow_instances_per_s']['c' + str(s['clients'])]})"
        )
    lines += report_qido(o["qido"])
    lines += report_wado(o["wado"])
    lines.append("")
    lines.append(
        "RATIOS cloudpacs/Orthanc (rates: >1 cloudpacs faster; p50 ms: >1 cloudpacs slower)"
    )
    for group in ("qido_p50_ms", "wado"):
        for key, value in r[group].items():
            lines.append(f"  {group:<12} {key:<45} {value}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 instances")
    parser.add_argument("--instances", type=int, help="corpus size (default 1200; quick 200)")
    parser.add_argument("--stow-instances", type=int, help="instances per STOW-RS level")
    parser.add_argument("--with-orthanc", action="store_true", help="Orthanc side by side")
    parser.add_argument(
        "--external-ferretdb",
        action="store_true",
        help="one FerretDB started here for all phases, via CLOUDPACS_MONGO_URI "
        "(default: each cloudpacs runs its embedded FerretDB, as `make run` does)",
    )
    parser.add_argument("--keep", action="store_true", help="keep perf/out/run-* afterwards")
    parser.add_argument("--out", type=Path, default=OUT / "results-core.json")
    args = parser.parse_args(argv)
    # Clean up (servers stopped by PID) on Ctrl-C and on SIGTERM, even when started with
    # SIGINT ignored (nohup, background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = QUICK if args.quick else Plan()
    if args.instances:
        plan = replace(plan, instances=args.instances)
    if args.stow_instances:
        plan = replace(plan, stow_instances=args.stow_instances)
    plan = replace(plan, stow_instances=min(plan.stow_instances, plan.instances))
    results = run_all(plan, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
