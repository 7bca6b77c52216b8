"""Crash repair: delete stored files no instance references, recompute interrupted rollups.

A journal entry (`uploads`) older than the grace period is either a file no instance
references (a write cut short: deleted) or the file of an instance whose rollups may not
include it (a crash after the insert: its study is recomputed, then the entry removed).

Everything only touches work older than a grace period, so a sweep never races a live ingest.

The journal (`uploads`) names every file being written, so the periodic sweep needs nothing
else. A crash while an overwritten instance's old file is being deleted leaves a file that
no instance references and no journal entry names; `full=True` (`cloudpacs db sweep`) also
finds those, at the price of reading every instance and listing every stored file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.instances import InstanceStore

log = logging.getLogger(__name__)

CLOCK_MARGIN = timedelta(seconds=1)
LIST_BACKFILL = 50  # studies given member lists per sweep


@dataclass(frozen=True)
class SweepReport:
    orphans_deleted: int
    uploads_settled: int
    studies_repaired: int
    unjournaled_deleted: int = 0


async def sweep(store: InstanceStore, grace_seconds: float, full: bool = False) -> SweepReport:
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    deleted, referenced = await _sweep_journal(store, cutoff)
    unjournaled = await _sweep_unjournaled(store, cutoff) if full else 0
    pending = set(referenced.values())
    # instances stored before the journal marked pending rollups were flagged instead
    pending |= set(
        await store.distinct(
            "instances", "study", {"rollup_pending": True, "ingested_at": {"$lt": cutoff}}
        )
    )
    studies = sorted(pending) + await _studies_without_lists(store, pending)
    for study_uid in studies:
        await store.recompute_rollups(study_uid)
    if referenced:  # the rollups include their instances now
        await store.settle_uploads(list(referenced))
    report = SweepReport(deleted, len(referenced), len(studies), unjournaled)
    if deleted or referenced or studies or unjournaled:
        log.info(
            "sweep.done",
            extra={
                "orphans_deleted": deleted,
                "uploads_settled": len(referenced),
                "studies_repaired": len(studies),
                "unjournaled_deleted": unjournaled,
            },
        )
    return report


async def _studies_without_lists(store: InstanceStore, already: set[str]) -> list[str]:
    """A few studies stored before member lists or read documents existed
    (storage.instances.listed_instances, read_instances), given theirs by the rebuild: older
    archives gain them over a few sweeps, in the background."""
    older = {"$or": [{"series_uids": {"$exists": False}}, {"read_docs": {"$exists": False}}]}
    docs = await store.find("studies", older, projection={"_id": 1}, limit=LIST_BACKFILL)
    return [doc["_id"] for doc in docs if doc["_id"] not in already]


async def _sweep_journal(store: InstanceStore, cutoff: datetime) -> tuple[int, dict[Any, str]]:
    """Old journal entries: delete those whose file no instance references (file document
    and chunks, which may exist without a file document); the others are instances whose
    rollups may not include them: file id -> their study, to recompute."""
    deleted = 0
    referenced: dict[Any, str] = {}
    for entry in await store.find("uploads", {"started_at": {"$lt": cutoff}}):
        file_id = entry["_id"]
        found = await store.find(
            "instances",
            {"$or": [{"file_id": file_id}, {"meta_file_id": file_id}]},
            projection={"study": 1},
            limit=1,
        )
        if found:
            referenced[file_id] = found[0]["study"]
        else:
            await store.delete_files([file_id])
            deleted += 1
    return deleted, referenced


async def _sweep_unjournaled(store: InstanceStore, cutoff: datetime) -> int:
    """Stored files that neither an instance nor the journal names.

    Order matters against live ingests (journal entry, then file, then the instance, then
    the entry removed): the journal is read first, and only files completed before that
    read are candidates. Such a file was either still journaled then, or referenced before
    its entry was removed, so a live one is never taken for an orphan."""
    journal_read_at = utcnow()
    journaled = set(await store.distinct("uploads", "_id", {}))
    referenced = set(await store.distinct("instances", "file_id", {}))
    referenced |= set(await store.distinct("instances", "meta_file_id", {}))
    before = min(cutoff, journal_read_at - CLOCK_MARGIN)  # uploadDate is in milliseconds
    files = await store.blobs.completed_before(before)
    orphans: list[Any] = [f for f in files if f not in referenced and f not in journaled]
    if orphans:
        await store.delete_files(orphans)
    return len(orphans)
