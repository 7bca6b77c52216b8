"""InstanceStore: the only place that reads and writes instances, rollups and stored files
(in GridFS or a directory: storage.file_stores).

Write order (no multi-document transactions on FerretDB, so visibility is one insert):
  1. an `uploads` journal entry names the file id about to be written
  2. the file bytes go to the file store               (invisible: nothing references them)
  3. the instance document is inserted                 (the instance is now visible)
  4. series and study rollups are updated (storage.rollups), then the journal entry
     is removed
A crash before 3 leaves a journal entry whose file (chunks included) the sweep deletes; after
3, a journal entry whose file an instance references: the sweep recomputes that instance's
study from the instances themselves, then removes the entry. (Archives written before this
order flagged such instances `rollup_pending` instead; the sweep still repairs those.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from cloudpacs.errors import NotFound
from cloudpacs.storage import documents
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.database import Database, translate_errors
from cloudpacs.storage.directory_files import DirectoryFiles, LocalFile
from cloudpacs.storage.file_stores import FileStore
from cloudpacs.storage.files import GridFSFiles, new_file_id
from cloudpacs.storage.insert_batches import InsertBatches
from cloudpacs.storage.kept_metadata import KeptInCollection, KeptInFiles, SeriesMetadataKeeper
from cloudpacs.storage.locks import Locks
from cloudpacs.storage.place_cache import PLACE_FIELDS, PlaceCache
from cloudpacs.storage.rollups import FILE_KEYS, Rollups
from cloudpacs.storage.schema import (
    FILES_BUCKET,
    INSTANCE_READS,
    INSTANCES,
    KEPT_METADATA,
    LOCKS,
    REJECTIONS,
    SERIES,
    SERIES_MEMBERS,
    STUDIES,
    STUDY_LOOKUP,
    STUDY_PROJECTS,
    STUDY_SEARCH,
    UPLOADS,
)
from cloudpacs.storage.single_flight import SingleFlight
from cloudpacs.storage.study_index import StudyIndex
from cloudpacs.storage.study_searches import StudySearches

LOOKUPS_AT_ONCE = 16  # concurrent lookups by _id where a `$in` would scan (FerretDB)


log = logging.getLogger(__name__)

CLEANUP_SECONDS = 1.0


# The order of a WADO-RS retrieval; missing numbers first, as MongoDB sorts them.
RETRIEVAL_ORDER = [("series_number", 1), ("series", 1), ("instance_number", 1), ("_id", 1)]


def retrieval_order(doc: dict[str, Any]) -> tuple[tuple[bool, Any], ...]:
    return tuple((doc.get(key) is not None, doc.get(key)) for key, _ in RETRIEVAL_ORDER)


class AlreadyStored(Exception):
    """An instance with this SOP Instance UID exists (raised by insert)."""


class InstanceStore:
    def __init__(
        self, database: Database, files: FileStore | None = None, places: PlaceCache | None = None
    ) -> None:
        self.db = database.db
        self.places = places  # of recently read instances (storage.place_cache)
        self.blobs = files if files is not None else GridFSFiles(self.db, FILES_BUCKET)
        self.instances = self.db[INSTANCES]
        self.reads = self.db[INSTANCE_READS]
        self.series = self.db[SERIES]
        self.studies = self.db[STUDIES]
        self.members = self.db[SERIES_MEMBERS]
        self.lookup = self.db[STUDY_LOOKUP]
        self.search = self.db[STUDY_SEARCH]
        self.uploads = self.db[UPLOADS]
        # Rollup updates of a study are serialised across processes (see storage.locks).
        self.locks = Locks(self.db[LOCKS], utcnow)
        self.study_index = StudyIndex(self.lookup, self.locks)
        kept = (
            KeptInFiles(self.blobs.root / KEPT_METADATA)
            if isinstance(self.blobs, DirectoryFiles)
            else KeptInCollection(self.db[KEPT_METADATA])
        )
        self.kept_metadata = SeriesMetadataKeeper(kept, self.series, self.locks)
        self.study_searches = StudySearches(self, self.study_index)
        self._database = database
        self._ferretdb: bool | None = None  # learnt from the server on first use
        self.rollups = Rollups(self)
        # concurrent ingests' journal entries and documents go in together (one transaction)
        self._journal_inserts = InsertBatches(self.uploads)
        self._instance_inserts = InsertBatches(self.instances)
        self._claims: SingleFlight[tuple[str, str], str] = SingleFlight(self._claim_study)

    # ---- write path -------------------------------------------------------------------
    async def upload_file(self, path: Path, name: str, kind: str = "dicom") -> ObjectId:
        """Copy a local file into the file store under a journal entry (the sweep's safety net)."""
        file_id = await self._journal(name)
        async with translate_errors():
            try:
                await self.blobs.write_path(file_id, path, name, {"kind": kind})
            except BaseException:
                await self.discard_files([file_id])
                raise
        return file_id

    async def upload_bytes(self, data: bytes, name: str, kind: str) -> ObjectId:
        file_id = await self._journal(name)
        async with translate_errors():
            await self.blobs.write_bytes(file_id, data, name, {"kind": kind})
        return file_id

    async def _journal(self, name: str) -> ObjectId:
        file_id = new_file_id()
        async with translate_errors():
            entry = {"_id": file_id, "name": name, "started_at": utcnow()}
            await self._journal_inserts.insert(entry)
        return file_id

    async def settle_uploads(self, file_ids: Sequence[ObjectId]) -> None:
        """The files are referenced by a stored instance now: forget their journal entries."""
        async with translate_errors():
            await self.uploads.delete_many({"_id": {"$in": list(file_ids)}})

    async def delete_files(self, file_ids: Sequence[Any]) -> None:
        """Delete stored files (even half-written ones) and their journal entries."""
        async with translate_errors():
            for file_id in file_ids:
                await self.blobs.delete(file_id)
                await self.uploads.delete_one({"_id": file_id})

    async def discard_files(self, file_ids: Sequence[Any]) -> None:
        """Best-effort delete after a failure; the journal lets the sweep finish what this
        cannot, and the original error matters more than this one."""
        try:
            # bounded: a drain must not wait on a database that is down (it goes on shielded)
            await asyncio.wait_for(asyncio.shield(self.delete_files(file_ids)), CLEANUP_SECONDS)
        except Exception:  # noqa: BLE001 - see docstring
            log.warning("store.cleanup_deferred", extra={"files": len(file_ids)})

    async def record_rejection(self, record: dict[str, Any]) -> None:
        async with translate_errors():
            await self.db[REJECTIONS].insert_one(record)

    async def claim_study(self, study_uid: str, project: str) -> str:
        """The project that holds the study: `project` if it is new (claimed atomically by
        the unique _id, so two projects racing for one study cannot both win). Concurrent
        claims of one study for one project share one lookup."""
        return await self._claims.get((study_uid, project))

    async def _claim_study(self, key: tuple[str, str]) -> str:
        study_uid, project = key
        claims = self.db[STUDY_PROJECTS]
        async with translate_errors():
            doc = await claims.find_one({"_id": study_uid})
            if doc is None:
                try:
                    await claims.insert_one({"_id": study_uid, "project": project, "at": utcnow()})
                    return project
                except DuplicateKeyError:
                    doc = await claims.find_one({"_id": study_uid})
        return str(doc["project"]) if doc else project

    async def study_projects(self, study_uids: Sequence[str]) -> dict[str, str]:
        """The project of each of these studies that exists (its claim)."""
        claims = await self.by_ids(STUDY_PROJECTS, list(study_uids), {"project": 1})
        return {doc["_id"]: str(doc["project"]) for doc in claims}

    async def existing(self, sop_uid: str) -> dict[str, Any] | None:
        async with translate_errors():
            doc: dict[str, Any] | None = await self.instances.find_one(
                {"_id": sop_uid},
                {
                    "sha256": 1,
                    "file_id": 1,
                    "meta_file_id": 1,
                    "study": 1,
                    "series": 1,
                    "project": 1,
                },
            )
        return doc

    async def insert(self, doc: dict[str, Any]) -> None:
        async with translate_errors():
            try:
                await self._instance_inserts.insert(doc)
            except DuplicateKeyError as exc:
                raise AlreadyStored(doc["_id"]) from exc

    async def replace(self, doc: dict[str, Any], expected_sha256: str) -> bool:
        """Swap the stored instance for `doc` if it still has `expected_sha256` and is in
        the same study and project (an overwrite never moves an instance elsewhere). Its
        read document goes at once, before the old file (reads fall back to the instance;
        the rebuild of its study's rollups makes a new one)."""
        query = {
            "_id": doc["_id"],
            "sha256": expected_sha256,
            "study": doc["study"],
            "project": doc["project"],
        }
        async with translate_errors():
            result = await self.instances.replace_one(query, doc)
            if result.matched_count == 1:
                self._forget_places([doc["_id"]])
                await self.reads.delete_one({"_id": doc["_id"]})
        return result.matched_count == 1

    async def apply_rollups(self, doc: dict[str, Any]) -> None:
        """Count one new instance into its series and study, then remove its journal entries
        (together with the other new instances of its study: storage.group_commit)."""
        await self.rollups.apply(doc)

    async def recompute_rollups(self, study_uid: str) -> None:
        """Rebuild a study's and its series' rollups from the instances (crash repair)."""
        await self.rollups.recompute(study_uid)

    async def remove_instances(self, docs: Sequence[dict[str, Any]]) -> None:
        """Delete instances and their files. The files are journaled first (as if being
        written), so that a crash half way leaves nothing the sweep cannot finish; the read
        documents go first, so that no read finds a file being deleted."""
        file_ids = [d[k] for d in docs for k in FILE_KEYS if d.get(k)]
        started = utcnow() - timedelta(days=3650)  # old at once: the sweep need not wait
        self._forget_places([d["_id"] for d in docs])
        async with translate_errors():
            await self.rollups.delete_reads([d["_id"] for d in docs])
            for file_id in file_ids:
                await self.uploads.replace_one(
                    {"_id": file_id}, {"name": "deleting", "started_at": started}, upsert=True
                )
            await self.instances.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
        await self.delete_files(file_ids)
        for study_uid in sorted({d["study"] for d in docs}):
            await self.recompute_rollups(study_uid)
            async with translate_errors():
                if not await self.instances.find_one({"study": study_uid}, {"_id": 1}):
                    await self.db[STUDY_PROJECTS].delete_one({"_id": study_uid})

    # ---- read path --------------------------------------------------------------------
    async def find(
        self,
        collection: str,
        query: dict[str, Any],
        *,
        projection: dict[str, Any] | None = None,
        sort: list[tuple[str, int]] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        async with translate_errors():
            cursor = self.db[collection].find(query, projection, skip=skip, limit=limit)
            if sort:
                cursor = cursor.sort(sort)
            result: list[dict[str, Any]] = await cursor.to_list(None)
        return result

    async def distinct(self, collection: str, key: str, query: dict[str, Any]) -> list[Any]:
        async with translate_errors():
            values: list[Any] = await self.db[collection].distinct(key, query)
        return values

    async def iter_instances(
        self, query: dict[str, Any], projection: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Instances in retrieval order (series number, instance number), one at a time."""
        async with translate_errors():
            cursor = self.instances.find(query, projection).sort(RETRIEVAL_ORDER)
            async for doc in cursor:
                yield doc

    async def by_ids(
        self, collection: str, ids: Sequence[Any], projection: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Documents by _id, in the order of `ids`, leaving out those that do not exist.

        FerretDB answers only a lone `_id` equality from its primary key; a `$in` scans the
        whole collection there. So on FerretDB the ids are looked up one by one, a few at
        a time; MongoDB gets one `$in` on its `_id` index."""
        if not ids:
            return []
        if await self.in_scans():
            gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)

            async def one(key: Any) -> list[dict[str, Any]]:
                async with gate:
                    return await self.find(collection, {"_id": key}, projection=projection)

            answers = await asyncio.gather(*(one(key) for key in ids))
            found = {doc["_id"]: doc for docs in answers for doc in docs}
        else:
            docs = await self.find(collection, {"_id": {"$in": list(ids)}}, projection=projection)
            found = {doc["_id"]: doc for doc in docs}
        return [found[key] for key in ids if key in found]

    async def in_scans(self) -> bool:
        """Whether a filter beside a lone `_id` scans the collection (FerretDB)."""
        if self._ferretdb is None:
            self._ferretdb = (await self._database.server_info()).ferretdb
        return self._ferretdb

    async def series_of(self, study_uid: str) -> list[str] | None:
        """The series UIDs of a study from its rollup; None if the study has no list (it was
        stored before lists existed, or its first rollup is still pending)."""
        found = await self.by_ids(STUDIES, [study_uid], {"series_uids": 1})
        if not found or "series_uids" not in found[0]:
            return None
        return list(found[0]["series_uids"])

    async def listed_instances(
        self, study_uid: str, series_uid: str | None, projection: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """The instances of a study, or of one of its series, in retrieval order, found by
        `_id` through the member lists: no scan, whatever the server. None where a list is
        missing (see series_of): the caller then queries the instances instead."""
        series_uids = [series_uid] if series_uid else await self.series_of(study_uid)
        if series_uids is None:
            return None
        lists = await self.by_ids(SERIES_MEMBERS, series_uids, {"instances": 1, "study": 1})
        if len(lists) < len(series_uids):
            return None
        ids = [sop for found in lists if found["study"] == study_uid for sop in found["instances"]]
        fields = {**projection, "study": 1, "series": 1, "project": 1}
        fields.update({key: 1 for key, _ in RETRIEVAL_ORDER})
        return sorted(await self._read_listed(ids, fields), key=retrieval_order)

    async def _read_listed(
        self, sop_uids: Sequence[str], fields: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """read_instances, but from the place cache for the instances it holds whose files
        are still there (one trip to a worker thread checks them all), when `fields` are
        place fields; the others are read and their places kept."""
        if self.places is None or not set(fields) - {"_id"} <= PLACE_FIELDS:
            return await self.read_instances(sop_uids, fields)
        places = self.places
        cached = {sop: place for sop in sop_uids if (place := places.get(sop)) is not None}
        if cached:
            paths = [self.blobs.local_path(place["file_id"]) for place in cached.values()]
            present = await asyncio.to_thread(_present, paths)
            for sop, there in zip(list(cached), present, strict=True):
                if not there:
                    places.stale(sop)  # overwritten or deleted, maybe by another node
                    del cached[sop]
        missing = [sop for sop in sop_uids if sop not in cached]
        read = await self.read_instances(missing, dict.fromkeys(PLACE_FIELDS, 1))
        for doc in read:
            places.put(doc)
        found = {**cached, **{doc["_id"]: doc for doc in read}}
        return [found[sop] for sop in sop_uids if sop in found]

    async def open_instance(self, sop_uid: str) -> tuple[dict[str, Any], LocalFile] | None:
        """An instance's place (PLACE_FIELDS) with its stored file open: from the place
        cache while the cached file still opens, else from the database. None without a
        place cache (a store without local files) or without the instance."""
        if self.places is None:
            return None
        place = self.places.get(sop_uid)
        if place is not None:
            opened = await self._open_local(place["file_id"])
            if opened is not None:
                return place, opened
            self.places.stale(sop_uid)  # overwritten or deleted, maybe by another node
        docs = await self.read_instances([sop_uid], dict.fromkeys(PLACE_FIELDS, 1))
        if not docs:
            return None
        opened = await self._open_local(docs[0]["file_id"])
        if opened is None:
            raise NotFound("stored file is missing")
        self.places.put(docs[0])
        return docs[0], opened

    async def _open_local(self, file_id: Any) -> LocalFile | None:
        path = self.blobs.local_path(file_id)
        if path is None:
            return None
        try:
            return await asyncio.to_thread(LocalFile.open, path)
        except FileNotFoundError:
            return None

    def _forget_places(self, sop_uids: Sequence[str]) -> None:
        if self.places is not None:
            self.places.forget(sop_uids)

    async def read_instances(
        self, sop_uids: Sequence[str], projection: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Instances by SOP Instance UID, in that order, leaving out those that do not exist,
        for reads: from their read documents, whose `meta_json` comes back as `meta`. Those
        without one yet (their rollups are pending; archives from before read documents,
        until a sweep rebuilds them) are read from `instances`."""
        wanted = set(projection) - {"_id"}
        if not wanted <= {*documents.READ_FIELDS, "meta"}:
            return await self.by_ids(INSTANCES, sop_uids, projection)
        fields = {key: 1 for key in wanted - {"meta"}}
        if "meta" in wanted:
            fields["meta_json"] = 1
        found = {doc["_id"]: doc for doc in await self.by_ids(INSTANCE_READS, sop_uids, fields)}
        missing = [sop for sop in sop_uids if sop not in found]
        for doc in await self.by_ids(INSTANCES, missing, projection):
            found[doc["_id"]] = doc
        docs = [found[sop] for sop in sop_uids if sop in found]
        for doc in docs:
            if "meta_json" in doc:
                doc["meta"] = json.loads(doc.pop("meta_json"))
        return docs

    async def full_meta(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The complete DICOM JSON of an instance (from the file store if too large inline)."""
        meta_file_id = doc.get("meta_file_id")
        if meta_file_id is None:
            meta: dict[str, Any] = doc["meta"]
            return meta
        chunks = [chunk async for chunk in self.stream_file(meta_file_id)]
        loaded: dict[str, Any] = json.loads(b"".join(chunks))
        return loaded

    async def check_files(self) -> None:
        """Unavailable if the stored files cannot be reached (storage.file_stores)."""
        await self.blobs.check()

    def local_path(self, file_id: Any) -> Path | None:
        """The stored file as a plain local file, if the file store keeps it so."""
        return self.blobs.local_path(file_id)

    async def stream_file(self, file_id: Any) -> AsyncIterator[bytes]:
        async with translate_errors():
            async for chunk in self.blobs.read(file_id):
                yield chunk

    async def read_range(self, file_id: Any, offset: int, length: int) -> AsyncIterator[bytes]:
        """Bytes [offset, offset+length) of a stored file, read chunk by chunk."""
        async with translate_errors():
            async for chunk in self.blobs.read(file_id, offset, length):
                yield chunk


def _present(paths: Sequence[Path | None]) -> list[bool]:
    """(Blocking: in a worker thread.) Whether each file is there."""
    return [path is not None and path.is_file() for path in paths]
