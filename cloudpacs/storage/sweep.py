"""Crash repair: delete GridFS files no instance references, recompute interrupted rollups.

Both only touch work older than a grace period, so a sweep never races a live ingest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from cloudpacs.storage.instances import InstanceStore, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    orphans_deleted: int
    uploads_settled: int
    studies_repaired: int


async def sweep(store: InstanceStore, grace_seconds: float) -> SweepReport:
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    deleted = settled = 0
    stale = await store.find("uploads", {"started_at": {"$lt": cutoff}})
    for entry in stale:
        file_id = entry["_id"]
        referenced = await store.find(
            "instances",
            {"$or": [{"file_id": file_id}, {"meta_file_id": file_id}]},
            projection={"_id": 1},
            limit=1,
        )
        if referenced:
            await store.settle_uploads([file_id])
            settled += 1
        else:
            await store.delete_files([file_id])
            deleted += 1
    studies = await store.distinct(
        "instances", "study", {"rollup_pending": True, "ingested_at": {"$lt": cutoff}}
    )
    for study_uid in studies:
        await store.recompute_rollups(study_uid)
    report = SweepReport(deleted, settled, len(studies))
    if deleted or settled or studies:
        log.info(
            "sweep.done",
            extra={
                "orphans_deleted": deleted,
                "uploads_settled": settled,
                "studies_repaired": len(studies),
            },
        )
    return report
