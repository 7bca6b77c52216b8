"""Loading the scale corpus into cloudpacs (metadata only, straight into its database) and
into Orthanc (its REST API), and checking that the direct load stores what ingest stores.

cloudpacs: every file is parsed by cloudpacs's parser and becomes the document
`documents.instance_document` builds (no GridFS bytes: metadata only). A study is stored as
ingest stores it, through cloudpacs's own InstanceStore: the project's claim, the instance
documents (one insert_many), then the rollup rounds of InstanceStore.apply_rollups (series,
members, read documents, study, search document, study index entries), the whole study in
one round. `verify_direct_load` checks the result against a real ingest of the same study.
(Until 2026-12-02 the rollups were recomputed per study in a scratch database, at 75-100
instances/s; see perf/RESULTS-SCALE.md.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchlib import Server, cpu_seconds
from orthanc_server import orthanc_post_file
from scale_corpus import ScaleCorpus, ScaleStudy

from cloudpacs.dicom.parse import parse_file
from cloudpacs.ingest import Ingestor, Source
from cloudpacs.metrics import Metrics
from cloudpacs.storage import documents
from cloudpacs.storage.database import Database, open_database
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.schema import INSTANCES, LOCKS

PROJECT = "default"  # cloudpacs's default project (settings.default_project)
SOURCE_KIND = "import"  # what `cloudpacs import` records as the source
# Fields that differ between two stores of the same file (times, GridFS file ids).
VOLATILE = {"ingested_at", "updated_at", "at", "file_id", "expires_at", "rev"}
# Collections of the write path's machinery, not of the stored archive.
NOT_ARCHIVE = {LOCKS, "uploads", "fs.files", "fs.chunks", "checkpoints", "rejections"}


def study_documents(corpus: ScaleCorpus, study: ScaleStudy) -> list[dict[str, Any]]:
    """The instance documents of a study, as ingest builds them (runs in a worker process)."""
    now = dt.datetime.now(dt.UTC)
    docs = []
    for row in corpus.files(study):
        path = corpus.folder / row["path"]
        parsed = parse_file(path)
        source = {"kind": SOURCE_KIND, "name": str(path)}
        doc = documents.instance_document(parsed, None, source, PROJECT, now)
        doc.pop("rollup_pending", None)
        docs.append(doc)
    return docs


def prepared(
    corpus: ScaleCorpus, studies: Sequence[ScaleStudy], workers: int, ahead: int = 8
) -> Iterator[tuple[ScaleStudy, list[dict[str, Any]]]]:
    """(study, documents) in order, generated and parsed by worker processes at most
    `ahead` studies in advance (the documents of 100k instances would take GBs)."""
    light = corpus.light()
    with ProcessPoolExecutor(workers) as pool:
        queue: deque[tuple[ScaleStudy, Future[list[dict[str, Any]]]]] = deque()
        for study in studies:
            queue.append((study, pool.submit(study_documents, light, study)))
            if len(queue) >= ahead:
                done, future = queue.popleft()
                yield done, future.result()
        while queue:
            done, future = queue.popleft()
            yield done, future.result()


class DirectLoader:
    """Stores whole studies into `database` through cloudpacs's own write path, files aside:
    the study's claim, its instance documents in one insert, then the rollup rounds ingest
    runs (InstanceStore.apply_rollups: one round for the study's instances together)."""

    def __init__(self, uri: str, database: str) -> None:
        self.main: Database = open_database(uri, database)
        self.store = InstanceStore(self.main)

    async def close(self) -> None:
        await self.main.close()

    async def load_study(self, docs: list[dict[str, Any]]) -> None:
        await self.store.claim_study(docs[0]["study"], PROJECT)
        await self.main.db[INSTANCES].insert_many(docs, ordered=False)
        await asyncio.gather(*(self.store.apply_rollups(doc) for doc in docs))


def load_cloudpacs(
    uri: str,
    database: str,
    corpus: ScaleCorpus,
    studies: Sequence[ScaleStudy],
    workers: int = 2,
    loaders: int = 2,
    progress: Any = None,
) -> dict[str, Any]:
    """Load `studies` into cloudpacs's database: `workers` processes parse, `loaders`
    studies are stored at once; counts and seconds."""

    async def run() -> dict[str, Any]:
        pending = prepared(corpus, studies, workers)
        lock = threading.Lock()  # one generator, read by `loaders` threads
        done: list[int] = []

        def take() -> tuple[ScaleStudy, list[dict[str, Any]]] | None:
            with lock:
                return next(pending, None)

        async def loader() -> None:
            direct = DirectLoader(uri, database)
            try:
                while item := await asyncio.to_thread(take):
                    await direct.load_study(item[1])
                    done.append(len(item[1]))
                    if progress is not None and len(done) % 100 == 0:
                        progress(f"  cloudpacs: {len(done)}/{len(studies)} studies")
            finally:
                await direct.close()

        started = time.perf_counter()
        await asyncio.gather(*(loader() for _ in range(loaders)))
        seconds = time.perf_counter() - started
        return {
            "studies": len(done),
            "instances": sum(done),
            "loaders": loaders,
            "parse_workers": workers,
            "seconds": round(seconds, 1),
            "instances_per_s": round(sum(done) / seconds, 1),
        }

    return asyncio.run(run())


# ---- Orthanc ----------------------------------------------------------------------------
def load_orthanc(
    server: Server, corpus: ScaleCorpus, studies: Sequence[ScaleStudy], clients: int = 8
) -> dict[str, Any]:
    """POST every file of `studies` to Orthanc's REST API with `clients` threads."""
    paths = [corpus.folder / row["path"] for study in studies for row in corpus.files(study)]

    def post(path: Path) -> str:
        answer = orthanc_post_file(server, path.read_bytes())
        return str(answer.get("Status", "?"))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(post, paths))
    seconds = time.perf_counter() - started
    counts = {s: statuses.count(s) for s in set(statuses)}
    return {
        "studies": len(studies),
        "instances": len(paths),
        "dicom_bytes": sum(p.stat().st_size for p in paths),
        "clients": clients,
        "statuses": counts,
        "seconds": round(seconds, 1),
        "instances_per_s": round(len(paths) / seconds, 1),
    }


# ---- checks -----------------------------------------------------------------------------
def wait_idle(pids: Sequence[int], timeout: float = 600.0, below: float = 0.05) -> float:
    """Seconds until the processes use under `below` of a core over one second (background
    work after a load, e.g. SQLite checkpoints or Orthanc's index), at most `timeout`."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(1.0)
        if sum(cpu_seconds(p) for p in pids) - before < below:
            break
    return round(time.perf_counter() - started, 1)


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in VOLATILE}


async def archive_contents(database: Database) -> dict[str, list[dict[str, Any]]]:
    names = await database.db.list_collection_names()
    out = {}
    for name in sorted(set(names) - NOT_ARCHIVE):
        docs = await database.db[name].find({}).sort("_id", 1).to_list(None)
        out[name] = [comparable(d) for d in docs]
    return out


def verify_direct_load(uri: str, corpus: ScaleCorpus, study: ScaleStudy) -> dict[str, Any]:
    """Store one study twice, by cloudpacs's Ingestor and by DirectLoader, in two fresh
    databases, and compare every archive collection (times and file ids aside)."""
    rows = corpus.files(study)
    suffix = os.getpid()
    via_ingest, via_direct = f"scale_verify_ingest_{suffix}", f"scale_verify_direct_{suffix}"

    async def run() -> dict[str, Any]:
        ingest_db = open_database(uri, via_ingest)
        try:
            ingestor = Ingestor(InstanceStore(ingest_db), Metrics(), default_project=PROJECT)
            for row in rows:
                path = corpus.folder / row["path"]
                await ingestor.ingest(path, Source(SOURCE_KIND, str(path)))
            loader = DirectLoader(uri, via_direct)
            try:
                await loader.load_study(study_documents(corpus, study))
                direct = await archive_contents(loader.main)
            finally:
                await loader.close()
            ingested = await archive_contents(ingest_db)
            await ingest_db.client.drop_database(via_direct)
        finally:
            await ingest_db.client.drop_database(via_ingest)
            await ingest_db.close()
        differences = [
            name
            for name in sorted(set(direct) | set(ingested))
            if direct.get(name) != ingested.get(name)
        ]
        return {
            "study_instances": len(rows),
            "collections_compared": sorted(set(direct) | set(ingested)),
            "differences": differences,
            "identical": not differences,
        }

    return asyncio.run(run())
