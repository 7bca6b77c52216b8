"""The study-search plan's constant, measured (issue #6, storage/study_searches.py).

An indexed study search checks each candidate on its search document, read by `_id`; a
scanned one filters every search document. SCANS_PER_CHECK is how many scanned documents
one check costs FerretDB. This loads 3,000 search documents shaped like cloudpacs's
(documents.study_search) into a fresh FerretDB, with the `_id` lookup indexes of the
embedded default, then times scans that match nothing and 3,000 lookups by `_id` at 1 and
16 at a time, with FerretDB's CPU for each.

    .venv/bin/python perf/bench_study_plan.py
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import datetime, timedelta
from typing import Any

from benchlib import cpu_seconds, scratch_ferretdb
from corpus import FAMILY, GIVEN
from pymongo import AsyncMongoClient

from cloudpacs.embedded import add_id_lookup_indexes
from cloudpacs.storage import documents

STUDIES = 3000
SCANS = 20
LOOKUPS = 3000


def search_documents(count: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    docs = []
    for n in range(count):
        study = {
            "_id": f"2.25.{rng.getrandbits(120)}",
            "project": "default",
            "patient_id": f"PERF{n % 900:04d}",
            "patient_name": [f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"],
            "study_date": datetime(2000, 1, 1) + timedelta(days=rng.randrange(9000)),
            "study_time": f"{rng.randrange(24):02d}{rng.randrange(60):02d}00",
            "accession": f"ACC{n:07d}",
            "study_id": str(n),
            "referring_physician": [f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"],
            "modalities": sorted(rng.sample(["CT", "MR", "PT", "SR"], rng.randint(1, 2))),
        }
        docs.append({"_id": study["_id"], **documents.study_search(study)})
    return docs


async def measure(uri: str, pid: int) -> dict[str, float]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    searches = client.plan.study_search
    ids = [doc["_id"] async for doc in searches.find({}, {"_id": 1})]
    out: dict[str, float] = {}
    before, started = cpu_seconds(pid), time.perf_counter()
    for _ in range(SCANS):
        assert await searches.find({"patient_id": "NOBODY"}).to_list(None) == []
    seconds = time.perf_counter() - started
    out["scan_cpu_ms_per_doc"] = 1000 * (cpu_seconds(pid) - before) / (SCANS * len(ids))
    out["scan_ms_per_doc"] = 1000 * seconds / (SCANS * len(ids))
    for clients in (1, 16):
        gate = asyncio.Semaphore(clients)

        async def one(i: int, gate: asyncio.Semaphore = gate) -> None:
            async with gate:
                assert await searches.find({"_id": ids[i % len(ids)]}).to_list(None)

        before, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(LOOKUPS)))
        seconds = time.perf_counter() - started
        out[f"lookup_cpu_ms_c{clients}"] = 1000 * (cpu_seconds(pid) - before) / LOOKUPS
        out[f"lookup_ms_c{clients}"] = 1000 * seconds / LOOKUPS
    await client.close()
    return out


async def load(uri: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    await client.plan.study_search.insert_many(search_documents(STUDIES))
    await client.close()


def main() -> int:
    with scratch_ferretdb("plan-") as (server, uri, data):
        asyncio.run(load(uri))
        add_id_lookup_indexes(data, "plan")  # as the embedded default does
        figures = asyncio.run(measure(uri, server.pid))
    for name, value in figures.items():
        print(f"{name:22} {value:.3f}")
    for clients in (1, 16):
        ratio = figures[f"lookup_cpu_ms_c{clients}"] / figures["scan_cpu_ms_per_doc"]
        print(f"one check costs {ratio:.1f} scanned documents of FerretDB CPU at {clients}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
