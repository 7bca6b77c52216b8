"""What one lookup by `_id` costs FerretDB, by document shape (issue #6, read documents).

Loads 300 instances of the benchmark corpus as full instance documents, as slim documents
without the DICOM JSON, and as read documents (the DICOM JSON as one string), then times
3,000 lookups by `_id` of each at 1 and 16 at a time, with FerretDB's CPU per lookup.

    .venv/bin/python perf/corpus.py --instances 1000
    .venv/bin/python perf/bench_lookups.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

import bson
from benchlib import REPO, cpu_seconds, scratch_ferretdb
from pymongo import AsyncMongoClient

from cloudpacs.dicom.parse import parse_file
from cloudpacs.embedded import add_id_lookup_indexes
from cloudpacs.storage import documents

CORPUS = REPO / "perf" / "out" / "corpus-n1000-p20-s7" / "dicom"
PROJECTION = {"file_id": 1, "transfer_syntax": 1, "study": 1, "series": 1, "size": 1}


async def measure(uri: str, pid: int, ids: list[str]) -> None:
    client: AsyncMongoClient[dict] = AsyncMongoClient(uri)
    db = client.lookups
    for name in ("full", "slim", "read"):
        for clients in (1, 16):
            gate = asyncio.Semaphore(clients)

            async def one(i: int, name: str = name, gate: asyncio.Semaphore = gate) -> None:
                async with gate:
                    await db[name].find_one({"_id": ids[i % len(ids)]}, PROJECTION)

            before, started = cpu_seconds(pid), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(3000)))
            seconds = time.perf_counter() - started
            cpu_ms = 1000 * (cpu_seconds(pid) - before) / 3000
            rate = 3000 / seconds
            print(f"{name:4} c={clients:2}: {rate:6.0f} lookups/s, FerretDB {cpu_ms:.2f} ms CPU")
    await client.close()


async def load(uri: str) -> list[str]:
    client: AsyncMongoClient[dict] = AsyncMongoClient(uri)
    db = client.lookups
    files = sorted(CORPUS.rglob("*.dcm"))[:300]
    full = [
        documents.instance_document(
            parse_file(f), "x", {"kind": "bench"}, "default", datetime.now(UTC)
        )
        for f in files
    ]
    slim = [{k: v for k, v in d.items() if k not in ("meta", "bulk", "pixels")} for d in full]
    read = [documents.instance_read(d) for d in full]
    for name, docs in (("full", full), ("slim", slim), ("read", read)):
        await db[name].insert_many(docs)
        print(f"{name}: {sum(len(bson.encode(d)) for d in docs) / len(docs):.0f} BSON bytes each")
    await client.close()
    return [d["_id"] for d in full]


def main() -> int:
    if not CORPUS.is_dir():
        print("run `.venv/bin/python perf/corpus.py --instances 1000` first", file=sys.stderr)
        return 2
    with scratch_ferretdb("lookups-") as (server, uri, data):
        ids = asyncio.run(load(uri))
        add_id_lookup_indexes(data, "lookups")  # as the embedded default does
        asyncio.run(measure(uri, server.pid, ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
