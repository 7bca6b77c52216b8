"""FerretDB's own raw write rate (pymongo, no cloudpacs): the ceiling cloudpacs ingest is
compared with in perf/bench_core.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bson
import gridfs
from bench_context import Context, Plan, log
from benchlib import (
    ResourceWatch,
    Server,
    start_ferretdb,
)
from bson import ObjectId
from pymongo import MongoClient


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
