"""The shapes of stored documents: one per instance, and rollups per series and study."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import bson

from cloudpacs.dicom import levels
from cloudpacs.dicom.parse import ParsedInstance

# MongoDB refuses documents over 16 MiB; beyond this the DICOM JSON moves to GridFS.
MAX_INLINE_DOCUMENT_BYTES = 12 * 1024 * 1024

STUDY_KEYS = (
    "patient_id",
    "patient_name",
    "study_date",
    "study_time",
    "accession",
    "study_id",
    "referring_physician",
)
SERIES_KEYS = ("modality", "series_number")
# What an instance's read document carries beside its DICOM JSON (`meta_json`).
READ_FIELDS = (
    "study",
    "series",
    "project",
    "sop_class",
    "transfer_syntax",
    "size",
    "file_id",
    "meta_file_id",
    "series_number",
    "instance_number",
)
# The version of the read documents a study has (`read_docs` in its rollup).
READ_DOCS_VERSION = 1
# What a study_search document holds (storage.schema.STUDY_SEARCH): what study searches
# filter on (storage.filters.STUDY_KEYS), and the project.
SEARCH_KEYS = ("project", *STUDY_KEYS, "modalities")


def instance_document(
    parsed: ParsedInstance, file_id: Any, source: dict[str, Any], project: str, now: datetime
) -> dict[str, Any]:
    pixels = None
    if parsed.pixels is not None:
        pixels = {
            "encapsulated": parsed.pixels.encapsulated,
            # FerretDB rejects arrays nested directly in arrays: one {offsets, lengths} per frame
            "frames": [
                {"o": [r[0] for r in frame], "l": [r[1] for r in frame]}
                for frame in parsed.pixels.frames
            ],
            "total_length": parsed.pixels.total_length,
        }
    return {
        "_id": parsed.sop_uid,
        "study": parsed.study_uid,
        "series": parsed.series_uid,
        "project": project,
        "sop_class": parsed.sop_class_uid,
        "transfer_syntax": parsed.transfer_syntax,
        "sha256": parsed.sha256,
        "size": parsed.size,
        "file_id": file_id,
        "source": source,
        "ingested_at": now,
        **parsed.keys,
        "meta": parsed.meta,
        "bulk": {path: [ref.offset, ref.length] for path, ref in parsed.bulk.items()},
        "pixels": pixels,
    }


def instance_read(doc: dict[str, Any]) -> dict[str, Any]:
    """An instance's read document: what WADO-RS and listings need, with the DICOM JSON as
    one string (FerretDB decodes one string much faster than the nested document)."""
    meta = json.dumps(doc["meta"], ensure_ascii=False, separators=(",", ":"))
    return {"_id": doc["_id"], **{k: doc[k] for k in READ_FIELDS if k in doc}, "meta_json": meta}


def is_oversized(doc: dict[str, Any]) -> bool:
    return len(bson.encode(doc)) > MAX_INLINE_DOCUMENT_BYTES


def reduced_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The searchable core kept inline when the full DICOM JSON lives in GridFS."""
    keep = set(levels.STUDY_ATTRIBUTES) | set(levels.SERIES_ATTRIBUTES)
    keep |= set(levels.REQUIRED_RETURN[levels.Level.INSTANCE])
    return {tag: value for tag, value in meta.items() if tag in keep and value.get("vr") != "SQ"}


def _subset(meta: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Any]:
    return {tag: meta[tag] for tag in tags if tag in meta}


def series_upsert(docs: Sequence[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Count new instances (of one series) into its rollup; the first describes a new one."""
    first = docs[0]
    return {
        "$setOnInsert": {
            "study": first["study"],
            "project": first.get("project"),
            "meta": _subset(first["meta"], levels.SERIES_ATTRIBUTES),
            **{key: first.get(key) for key in SERIES_KEYS},
        },
        "$inc": {"instance_count": len(docs)},
        # a new token at every change: storage.kept_metadata keeps a rendering of the series
        # only if its `rev` did not change while it was made
        "$set": {"updated_at": now, "rev": uuid.uuid4().hex},
    }


def study_upsert(docs: Sequence[dict[str, Any]], new_series: int, now: datetime) -> dict[str, Any]:
    """Count new instances (of one study, in `new_series` series it did not have) into its
    rollup; the first describes a new study."""
    first = docs[0]
    add: dict[str, Any] = {
        "sop_classes": {"$each": _distinct(doc["sop_class"] for doc in docs)},
        "series_uids": {"$each": _distinct(doc["series"] for doc in docs)},
    }
    modalities = _distinct(doc["modality"] for doc in docs if doc.get("modality"))
    if modalities:
        add["modalities"] = {"$each": modalities}
    return {
        "$setOnInsert": {
            "project": first.get("project"),
            "meta": _subset(first["meta"], levels.STUDY_ATTRIBUTES),
            **{key: first.get(key) for key in STUDY_KEYS},
            "read_docs": READ_DOCS_VERSION,
        },
        "$inc": {"instance_count": len(docs), "series_count": new_series},
        "$addToSet": add,
        "$set": {"updated_at": now},
    }


def members_upsert(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Enter new instances (of one series) in its member list."""
    return {
        "$setOnInsert": {"study": docs[0]["study"]},
        "$addToSet": {"instances": {"$each": [doc["_id"] for doc in docs]}},
    }


def study_search(study: dict[str, Any]) -> dict[str, Any]:
    """A study's search document, from its rollup (or its first instance, with `modalities`)."""
    return {key: study.get(key) for key in SEARCH_KEYS if key != "modalities"} | {
        "modalities": sorted(study.get("modalities") or [])
    }


def study_search_upsert(docs: Sequence[dict[str, Any]], modalities: list[str]) -> dict[str, Any]:
    """New instances of a study: its search document if new, and the modalities it lacked."""
    keys = {key: docs[0].get(key) for key in SEARCH_KEYS if key != "modalities"}
    if not modalities:
        return {"$setOnInsert": {**keys, "modalities": []}}
    return {"$setOnInsert": keys, "$addToSet": {"modalities": {"$each": modalities}}}


def _distinct(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))
