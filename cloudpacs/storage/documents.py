"""The shapes of stored documents: one per instance, and rollups per series and study."""

from __future__ import annotations

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
# Study keys the study lookup answers exact matches on (see storage.schema.STUDY_LOOKUP).
LOOKUP_KEYS = ("patient_id", "accession")


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
        "rollup_pending": True,
    }


def is_oversized(doc: dict[str, Any]) -> bool:
    return len(bson.encode(doc)) > MAX_INLINE_DOCUMENT_BYTES


def reduced_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The searchable core kept inline when the full DICOM JSON lives in GridFS."""
    keep = set(levels.STUDY_ATTRIBUTES) | set(levels.SERIES_ATTRIBUTES)
    keep |= set(levels.REQUIRED_RETURN[levels.Level.INSTANCE])
    return {tag: value for tag, value in meta.items() if tag in keep and value.get("vr") != "SQ"}


def _subset(meta: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Any]:
    return {tag: meta[tag] for tag in tags if tag in meta}


def series_upsert(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "$setOnInsert": {
            "study": doc["study"],
            "project": doc.get("project"),
            "meta": _subset(doc["meta"], levels.SERIES_ATTRIBUTES),
            **{key: doc.get(key) for key in SERIES_KEYS},
        },
        "$inc": {"instance_count": 1},
        "$set": {"updated_at": now},
    }


def study_upsert(doc: dict[str, Any], new_series: bool, now: datetime) -> dict[str, Any]:
    add: dict[str, Any] = {
        "sop_classes": {"$each": [doc["sop_class"]]},
        "series_uids": {"$each": [doc["series"]]},
    }
    if doc.get("modality"):
        add["modalities"] = {"$each": [doc["modality"]]}
    return {
        "$setOnInsert": {
            "project": doc.get("project"),
            "meta": _subset(doc["meta"], levels.STUDY_ATTRIBUTES),
            **{key: doc.get(key) for key in STUDY_KEYS},
        },
        "$inc": {"instance_count": 1, "series_count": 1 if new_series else 0},
        "$addToSet": add,
        "$set": {"updated_at": now},
    }


def members_upsert(doc: dict[str, Any]) -> dict[str, Any]:
    return {"$setOnInsert": {"study": doc["study"]}, "$addToSet": {"instances": doc["_id"]}}


def lookup_id(key: str, value: Any) -> str:
    return f"{key}={value}"


def lookup_ids(doc: dict[str, Any]) -> list[str]:
    """The study lookup entries a study (or an instance of it) belongs in."""
    return [lookup_id(key, doc[key]) for key in LOOKUP_KEYS if doc.get(key)]
