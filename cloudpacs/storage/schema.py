"""Collections, indexes and the server-side validator (`cloudpacs db init`).

FerretDB v1.24 (our embedded database) has no collection validators: creating one answers
NotImplemented. We detect that, say so, and rely on the application's own validation, which
runs on every ingest whatever the server.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure

from cloudpacs.storage import documents, study_index
from cloudpacs.storage.database import NOT_IMPLEMENTED_CODE, Database, translate_errors
from cloudpacs.storage.locks import Locks

log = logging.getLogger(__name__)

INSTANCES = "instances"
SERIES = "series"
STUDIES = "studies"
# series UID -> the SOP Instance UIDs in it, so listing a series is a lookup by _id
SERIES_MEMBERS = "series_members"
# per instance, only what reads need (its file, its place, its DICOM JSON as one string):
# FerretDB decodes a whole document to answer a lookup, and these cost a third of an
# instance document (storage.documents.instance_read)
INSTANCE_READS = "instance_reads"
KEPT_METADATA = "kept_metadata"  # series metadata kept rendered (storage.kept_metadata)
# the study index of the embedded database: "patient_id=<value>", "name:SMI", "date:202403",
# "modality:CT", ... -> UIDs of the studies with it (storage.study_index)
STUDY_LOOKUP = "study_lookup"
# in CHECKPOINTS once every study is in (2: with the name, date and modality entries)
STUDY_LOOKUP_READY = {"_id": "index:study_lookup:3"}
# per study, only the keys a study search filters on: FerretDB answers a search by decoding
# every document it scans, and these are a fifth of the size of the study rollups
STUDY_SEARCH = "study_search"
STUDY_SEARCH_READY = {"_id": "index:study_search"}
FILES_BUCKET = "fs"
REJECTIONS = "rejections"  # permanent refusals, for operators
LOCKS = "locks"  # see storage.locks
CHECKPOINTS = "checkpoints"  # see storage.checkpoints
UPLOADS = "uploads"  # journal of GridFS files being written (see storage.instances)
STUDY_PROJECTS = "study_projects"  # study UID -> its one project (claimed at first ingest)
TOKENS = "tokens"  # API tokens, by id, with the hash of their secret (see storage.tokens)
AUDIT = "audit"  # append-only access records (see storage.audit)
# What the application user may do per collection (deploy/mongo creates its role from this):
# everything on its working collections, but only find and insert on the audit trail.
APP_READ_WRITE = (
    INSTANCES,
    INSTANCE_READS,
    KEPT_METADATA,
    SERIES,
    STUDIES,
    SERIES_MEMBERS,
    STUDY_LOOKUP,
    STUDY_SEARCH,
    f"{FILES_BUCKET}.files",
    f"{FILES_BUCKET}.chunks",
    REJECTIONS,
    LOCKS,
    CHECKPOINTS,
    UPLOADS,
    STUDY_PROJECTS,
    TOKENS,
)
APP_APPEND_ONLY = (AUDIT,)

# NamespaceExists, IndexAlreadyExists, IndexOptionsConflict, IndexKeySpecsConflict
ALREADY_EXISTS_CODES = {48, 68, 85, 86}
UNAUTHORIZED_CODE = 13

FILL_BATCH = 100

_UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_UID_SCHEMA = {"bsonType": "string", "maxLength": 64, "pattern": _UID_PATTERN}

INSTANCE_VALIDATOR: dict[str, Any] = {
    "$jsonSchema": {
        "bsonType": "object",
        "required": ["_id", "study", "series", "sop_class", "sha256", "size", "file_id"],
        "properties": {
            "_id": _UID_SCHEMA,
            "study": _UID_SCHEMA,
            "series": _UID_SCHEMA,
            "sop_class": _UID_SCHEMA,
            "sha256": {"bsonType": "string", "minLength": 64, "maxLength": 64},
            "size": {"bsonType": ["int", "long"], "minimum": 1},
        },
    }
}

# Every supported QIDO match on a normalised key has an index; the rest scan `meta`.
INSTANCE_INDEXES = [
    IndexModel([("study", ASCENDING), ("series", ASCENDING), ("instance_number", ASCENDING)]),
    IndexModel([("series", ASCENDING)]),
    IndexModel([("sop_class", ASCENDING)]),
    IndexModel([("patient_id", ASCENDING)]),
    IndexModel([("patient_name", ASCENDING)]),
    IndexModel([("study_date", ASCENDING)]),
    IndexModel([("accession", ASCENDING)]),
    IndexModel([("modality", ASCENDING)]),
    IndexModel([("rollup_pending", ASCENDING)], sparse=True),
    IndexModel([("project", ASCENDING), ("study", ASCENDING)]),
]
SERIES_INDEXES = [
    IndexModel([("study", ASCENDING), ("series_number", ASCENDING)]),
    IndexModel([("project", ASCENDING)]),
    IndexModel([("modality", ASCENDING)]),
]
STUDY_INDEXES = [
    IndexModel([("patient_id", ASCENDING)]),
    IndexModel([("patient_name", ASCENDING)]),
    IndexModel([("study_date", ASCENDING), ("study_time", ASCENDING)]),
    IndexModel([("accession", ASCENDING)]),
    IndexModel([("modalities", ASCENDING)]),
    IndexModel([("referring_physician", ASCENDING)]),
    IndexModel([("project", ASCENDING)]),
]
SERIES_MEMBERS_INDEXES = [IndexModel([("study", ASCENDING)])]
INSTANCE_READS_INDEXES = [IndexModel([("study", ASCENDING), ("series", ASCENDING)])]
TOKEN_INDEXES = [IndexModel([("subject", ASCENDING)])]
AUDIT_INDEXES = [
    IndexModel([("at", ASCENDING)]),
    IndexModel([("user", ASCENDING), ("at", ASCENDING)]),
    IndexModel([("study", ASCENDING), ("at", ASCENDING)]),
]
UPLOAD_INDEXES = [IndexModel([("started_at", ASCENDING)])]
FILES_INDEXES = [IndexModel([("filename", ASCENDING), ("uploadDate", ASCENDING)])]
CHUNKS_INDEXES = [IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)]
CHECKPOINT_INDEXES = [IndexModel([("job", ASCENDING)], sparse=True)]
REJECTION_INDEXES = [
    IndexModel([("at", ASCENDING)]),
    IndexModel([("reason_code", ASCENDING), ("at", ASCENDING)]),
]


async def init_schema(database: Database) -> list[str]:
    """Create collections and indexes idempotently; returns notes for the operator."""
    db = database.db
    notes: list[str] = []
    async with translate_errors():
        notes.append(await _create_validated_instances(database))
        existing = set(await db.list_collection_names())
        for name in (
            INSTANCE_READS,
            KEPT_METADATA,
            SERIES,
            STUDIES,
            SERIES_MEMBERS,
            STUDY_LOOKUP,
            STUDY_SEARCH,
            UPLOADS,
            REJECTIONS,
            LOCKS,
            CHECKPOINTS,
            STUDY_PROJECTS,
            TOKENS,
            AUDIT,
        ):
            if name not in existing:
                await _create_collection(db, name)
        for collection, indexes in (
            (INSTANCES, INSTANCE_INDEXES),
            (SERIES, SERIES_INDEXES),
            (STUDIES, STUDY_INDEXES),
            (STUDY_SEARCH, STUDY_INDEXES),
            (SERIES_MEMBERS, SERIES_MEMBERS_INDEXES),
            (INSTANCE_READS, INSTANCE_READS_INDEXES),
            (UPLOADS, UPLOAD_INDEXES),
            (REJECTIONS, REJECTION_INDEXES),
            (CHECKPOINTS, CHECKPOINT_INDEXES),
            (TOKENS, TOKEN_INDEXES),
            (AUDIT, AUDIT_INDEXES),
            (f"{FILES_BUCKET}.files", FILES_INDEXES),
            (f"{FILES_BUCKET}.chunks", CHUNKS_INDEXES),
        ):
            await _ensure_indexes(db[collection], indexes)
        if (await database.server_info()).ferretdb:
            notes += await _fill_study_index(db)
        notes += await _fill_study_search(db)
    notes.append("indexes ready")
    return notes


async def _fill_study_index(db: Any) -> list[str]:
    """Archives from before the study index (or its name, date and modality entries): enter
    every study once (one scan of the studies), then mark it ready; ingest keeps it up to
    date from then on. Only on FerretDB: MongoDB's indexes answer the same searches."""
    if await db[CHECKPOINTS].find_one(STUDY_LOOKUP_READY):
        return []
    index = study_index.StudyIndex(db[STUDY_LOOKUP], Locks(db[LOCKS], lambda: datetime.now(UTC)))
    # a rebuild enters every study again: its count starts over (a study ingested meanwhile
    # by another node may count twice; the count only guides search plans)
    await index.reset_count()
    fields = {key: 1 for key in (*study_index.EXACT_KEYS.values(), "patient_name", "study_date")}
    count = 0
    pending: list[Any] = []
    async for study in db[STUDIES].find({}, {**fields, "modalities": 1}):
        entries = study_index.entries_of(study, study.get("modalities") or [])
        decade = study_index.decade_of(study)
        pending.append(index.enter(study["_id"], entries, decade, new=True))
        count += 1
        if len(pending) >= FILL_BATCH:  # entered together, in one round
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    await _insert_once(db[CHECKPOINTS], dict(STUDY_LOOKUP_READY))
    return [f"study index built for {count} studies"] if count else []


async def _fill_study_search(db: Any) -> list[str]:
    """Archives from before `study_search`: one document per study, once."""
    if await db[CHECKPOINTS].find_one(STUDY_SEARCH_READY):
        return []
    count = 0
    async for study in db[STUDIES].find({}, {key: 1 for key in documents.SEARCH_KEYS}):
        await db[STUDY_SEARCH].replace_one(
            {"_id": study["_id"]}, documents.study_search(study), upsert=True
        )
        count += 1
    await _insert_once(db[CHECKPOINTS], dict(STUDY_SEARCH_READY))
    return [f"study search keys copied for {count} studies"] if count else []


async def _ensure_indexes(collection: Any, indexes: list[IndexModel]) -> None:
    """Create the missing indexes one by one. (FerretDB v1.24 drops the connection when one
    createIndexes command names several indexes that already exist.)"""
    existing = set((await collection.index_information()).keys())
    for index in indexes:
        if index.document["name"] not in existing:
            try:
                await collection.create_indexes([index])
            except OperationFailure as exc:
                if exc.code not in ALREADY_EXISTS_CODES:  # another node made it meanwhile
                    raise


async def _create_collection(db: Any, name: str, **options: Any) -> None:
    try:
        await db.create_collection(name, **options)
    except CollectionInvalid:
        pass  # another process created it meanwhile
    except OperationFailure as exc:
        if exc.code not in ALREADY_EXISTS_CODES:
            raise


async def _create_validated_instances(database: Database) -> str:
    db = database.db
    try:
        existing = await (await db.list_collections(filter={"name": INSTANCES})).to_list(None)
        if not existing:
            await _create_collection(db, INSTANCES, validator=INSTANCE_VALIDATOR)
        elif existing[0].get("options", {}).get("validator") != INSTANCE_VALIDATOR:
            # collMod needs more than readWrite: run by `db init` as an administrator
            await db.command("collMod", INSTANCES, validator=INSTANCE_VALIDATOR)
        return "server-side $jsonSchema validator installed on instances"
    except OperationFailure as exc:
        if exc.code == UNAUTHORIZED_CODE:
            log.warning("schema.validator_not_updated")
            return (
                "validator not updated: this user may not run collMod (least privilege); "
                "run `cloudpacs db init` as the administrator"
            )
        if exc.code != NOT_IMPLEMENTED_CODE:
            raise
    await _create_collection(db, INSTANCES)
    info = await database.server_info()
    note = (
        f"server-side validation is unavailable on {info.name} {info.version}: "
        "relying on the application's validation"
    )
    log.warning("schema.validator_unavailable", extra={"server": info.name})
    return note


async def assign_default_project(database: Database, project: str) -> list[str]:
    """Archives from before projects: put project-less data into the default project.
    Once done (marked in `checkpoints`), later start-ups skip the three scans."""
    db = database.db
    moved = 0
    marker = {"_id": "migration:projects"}
    async with translate_errors():
        if await db[CHECKPOINTS].find_one(marker):
            return []
        for name in (INSTANCES, SERIES, STUDIES):
            result = await db[name].update_many(
                {"project": {"$exists": False}}, {"$set": {"project": project}}
            )
            moved += result.modified_count
        if moved:
            for study in await db[STUDIES].distinct("_id", {"project": project}):
                await _insert_once(db[STUDY_PROJECTS], {"_id": study, "project": project})
        await _insert_once(db[CHECKPOINTS], {**marker, "project": project})
    return [f"{moved} documents from before projects assigned to {project!r}"] if moved else []


async def _insert_once(collection: Any, doc: dict[str, Any]) -> None:
    """Insert unless a document with this _id exists (another node starting at once)."""
    try:
        await collection.insert_one(doc)
    except DuplicateKeyError:
        pass
