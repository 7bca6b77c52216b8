"""Rollups: what the instances of a study add up to, kept beside them.

Per series its rollup (`series`) and member list (`series_members`), per instance its read
document (`instance_reads`), per study its rollup (`studies`), search document
(`study_search`) and study index entries (storage.study_index). New instances are counted in
by rounds (storage.group_commit: the new instances of a study arriving together, under the
study's rollup lock); `recompute` rebuilds a study's from its instances (crash repair,
deletion, overwrite).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from cloudpacs.storage import documents, study_index
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.database import translate_errors
from cloudpacs.storage.group_commit import GroupCommit
from cloudpacs.storage.insert_batches import already_there_is_fine
from cloudpacs.storage.schema import SERIES_MEMBERS

if TYPE_CHECKING:
    from cloudpacs.storage.instances import InstanceStore

UPSERT_RETRIES = 3
FILE_KEYS = ("file_id", "meta_file_id")  # the stored files an instance document names


class Rollups:
    def __init__(self, store: InstanceStore) -> None:
        self.store = store
        self.instances = store.instances
        self.reads = store.reads
        self.series = store.series
        self.studies = store.studies
        self.members = store.members
        self.search = store.search
        self.uploads = store.uploads
        self.locks = store.locks
        self.study_index = store.study_index
        self.kept_metadata = store.kept_metadata
        # the new instances of a study arriving meanwhile are counted in together
        self._rounds: GroupCommit[dict[str, Any], None] = GroupCommit(self._apply)

    async def apply(self, doc: dict[str, Any]) -> None:
        """Count one new instance into its series and study, then remove its journal entries
        (together with the other new instances of its study: storage.group_commit)."""
        await self._rounds.add(doc["study"], doc)

    async def _apply(self, study_uid: str, docs: list[dict[str, Any]]) -> None:
        now = utcnow()
        by_series: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            by_series.setdefault(doc["series"], []).append(doc)
        async with translate_errors(), self.locks.hold(f"rollup:{study_uid}"):
            # lists and read documents first: a series' new `rev` (in its rollup) must come
            # after every change a rendering of its metadata may read (storage.kept_metadata)
            for series_uid, members in by_series.items():
                update_members = documents.members_upsert(members)
                await self._upsert(self.members, series_uid, update_members, returning=False)
            # a read document already there (a round retried) is left as it is
            async with already_there_is_fine():
                reads = [documents.instance_read(doc) for doc in docs]
                await self.reads.insert_many(reads, ordered=False)
            new_series = 0
            for series_uid, members in by_series.items():
                update = documents.series_upsert(members, now)
                new_series += await self._upsert(self.series, series_uid, update) is None
            await self.kept_metadata.forget(list(by_series))
            update = documents.study_upsert(docs, new_series, now)
            before = await self._upsert(self.studies, study_uid, update)
            had = set(before.get("modalities") or []) if before else set()
            added = update["$addToSet"].get("modalities", {}).get("$each", [])
            new_modalities = [m for m in added if m not in had]
            if before is None:
                await self._enter_in_index(docs[0], added, new=True)
            elif new_modalities:
                await self._enter_in_index({"study": study_uid}, new_modalities)
            if before is None or new_modalities:
                update = documents.study_search_upsert(docs, new_modalities)
                await self._upsert(self.search, study_uid, update, returning=False)
            # the rollups include these instances now: their journal entries may go (one
            # delete; the journal holds only files in flight, so its `$in` scan is short)
            file_ids = [doc[key] for doc in docs for key in FILE_KEYS if doc.get(key)]
            await self.uploads.delete_many({"_id": {"$in": file_ids}})

    async def _upsert(
        self, collection: Any, key: str, update: dict[str, Any], *, returning: bool = True
    ) -> Any:
        """Upsert by _id; the document as it was before (None if new) when `returning`.
        (FerretDB does not project findAndModify's answer: a long list comes back whole.)"""
        for attempt in range(UPSERT_RETRIES):
            try:
                if not returning:
                    return await collection.update_one({"_id": key}, update, upsert=True)
                return await collection.find_one_and_update(
                    {"_id": key}, update, upsert=True, return_document=ReturnDocument.BEFORE
                )
            except DuplicateKeyError:
                if attempt == UPSERT_RETRIES - 1:
                    raise
        return None

    async def _enter_in_index(
        self, doc: dict[str, Any], modalities: Sequence[str], new: bool = False
    ) -> None:
        """Name a study (from its first instance) in the study index; only on FerretDB."""
        if await self.store.in_scans():
            entries = study_index.entries_of(doc, modalities)
            decade = study_index.decade_of(doc)
            await self.study_index.enter(doc["study"], entries, decade, new)

    async def recompute(self, study_uid: str) -> None:
        """Rebuild a study's and its series' rollups from the instances (crash repair)."""
        now = utcnow()
        async with translate_errors(), self.locks.hold(f"rollup:{study_uid}"):
            listed_series, listed = await self._listed_ids(study_uid)
            series_uids = await self.instances.distinct("series", {"study": study_uid})
            study_total = 0
            kept: set[str] = set()
            modalities: set[str] = set()
            sop_classes: set[str] = set()
            first: dict[str, Any] | None = None
            for series_uid in series_uids:
                cursor = self.instances.find(
                    {"series": series_uid},
                    {
                        "meta": 1,
                        "modality": 1,
                        "series_number": 1,
                        "study": 1,
                        "series": 1,
                        "project": 1,
                        **{k: 1 for k in (*documents.STUDY_KEYS, *documents.READ_FIELDS)},
                    },
                )
                docs = await cursor.to_list(None)
                await self._replace_reads(docs)
                kept |= {doc["_id"] for doc in docs}
                study_total += len(docs)
                modalities |= {d["modality"] for d in docs if d.get("modality")}
                sop_classes |= {d["sop_class"] for d in docs}
                first = first or docs[0]
                await self.members.replace_one(
                    {"_id": series_uid},
                    {"study": study_uid, "instances": [d["_id"] for d in docs]},
                    upsert=True,
                )
                series_doc = documents.series_upsert(docs, now)
                await self.series.replace_one(
                    {"_id": series_uid},
                    {
                        **series_doc["$setOnInsert"],
                        **series_doc["$set"],
                        "instance_count": len(docs),
                    },
                    upsert=True,
                )
            await self.delete_reads(sorted(listed - kept))
            for gone in (self.series, self.members):
                await gone.delete_many({"study": study_uid, "_id": {"$nin": series_uids}})
            await self.kept_metadata.forget(sorted(set(series_uids) | set(listed_series)))
            if first is None:
                await self.studies.delete_one({"_id": study_uid})
                await self.search.delete_one({"_id": study_uid})
            else:
                await self._enter_in_index(first, sorted(modalities))
                study_doc = documents.study_upsert([first], 1, now)["$setOnInsert"]
                await self.studies.replace_one(
                    {"_id": study_uid},
                    {
                        **study_doc,
                        "instance_count": study_total,
                        "series_count": len(series_uids),
                        "series_uids": sorted(series_uids),
                        "modalities": sorted(modalities),
                        "sop_classes": sorted(sop_classes),
                        "updated_at": now,
                    },
                    upsert=True,
                )
                search = documents.study_search({**first, "modalities": modalities})
                await self.search.replace_one({"_id": study_uid}, search, upsert=True)
            await self.instances.update_many(
                {"study": study_uid, "rollup_pending": True}, {"$unset": {"rollup_pending": ""}}
            )

    async def _listed_ids(self, study_uid: str) -> tuple[list[str], set[str]]:
        """The series and SOP Instance UIDs the member lists of a study name (the latter
        have read documents)."""
        series_uids = await self.store.series_of(study_uid) or []
        lists = await self.store.by_ids(SERIES_MEMBERS, series_uids, {"instances": 1})
        return series_uids, {sop for found in lists for sop in found["instances"]}

    async def _replace_reads(self, docs: Sequence[dict[str, Any]]) -> None:
        for doc in docs:
            read = documents.instance_read(doc)
            await self.reads.replace_one({"_id": read["_id"]}, read, upsert=True)

    async def delete_reads(self, sop_uids: Sequence[str]) -> None:
        """Delete read documents by _id, one by one (a `$in` scans on FerretDB)."""
        for sop_uid in sop_uids:
            await self.reads.delete_one({"_id": sop_uid})
