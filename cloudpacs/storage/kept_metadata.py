"""Series metadata kept rendered (WADO-RS `.../series/{series}/metadata`) for the next request.

A series' metadata is the DICOM JSON of every instance in it: rendering it reads each
instance's read document (one lookup each, decoded by FerretDB) and encodes it. The text is
kept by series UID, split where the request's base URL goes (in every BulkDataURI), so that
the next request is one read and a join: in `kept_metadata` (one lookup), or with a directory
file store in `<file_store_dir>/kept_metadata/<series UID>.json`, which every node sharing the
directory reads without a database lookup (perf/RESULTS.md).

Never stale: ingest, deletion, overwrites and rebuilds change a series under its study's
rollup lock, give it a new `rev` (a random token) and forget its text there (InstanceStore).
A reader keeps what it rendered only under the same lock, and only if the series' `rev` is
still the one it read before rendering; so a text that misses a change is never kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cloudpacs.storage.locks import Locks

# Kept only below this size: MongoDB documents are limited to 16 MiB, and a series this
# large is read in a stream rather than held in memory.
MAX_KEPT_CHARS = 8 * 1024 * 1024
# Series UIDs that are kept as file names: digits and dots only (never a path elsewhere).
_FILE_NAME_UID = re.compile(r"[0-9.]{1,64}")


@dataclass(frozen=True)
class KeptMetadata:
    study: str
    series: str
    project: str | None
    parts: list[str]

    def place(self) -> dict[str, Any]:
        """Where the series lies, as Scope.admits reads an instance document."""
        return {"study": self.study, "series": self.series, "project": self.project}

    def render(self, base_url: str) -> str:
        """The JSON array, its BulkDataURIs below `base_url`."""
        return json.dumps(base_url, ensure_ascii=False)[1:-1].join(self.parts)


class KeptTexts(Protocol):
    """Where kept texts live: {study, project, parts} by series UID."""

    async def load(self, series_uid: str) -> dict[str, Any] | None: ...

    async def save(self, series_uid: str, doc: dict[str, Any]) -> None: ...

    async def drop(self, series_uid: str) -> None: ...


class KeptInCollection:
    def __init__(self, collection: Any) -> None:
        self.collection = collection  # storage.schema.KEPT_METADATA

    async def load(self, series_uid: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.collection.find_one({"_id": series_uid})
        return doc

    async def save(self, series_uid: str, doc: dict[str, Any]) -> None:
        await self.collection.replace_one({"_id": series_uid}, doc, upsert=True)

    async def drop(self, series_uid: str) -> None:
        await self.collection.delete_one({"_id": series_uid})


class KeptInFiles:
    """One JSON file per series, replaced whole (written aside, then renamed). A cache, so
    not fsynced: a file a crash left unreadable is treated as not kept. Series UIDs that
    are not plain digits and dots are never kept."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, series_uid: str) -> Path | None:
        if not _FILE_NAME_UID.fullmatch(series_uid):
            return None
        return self.directory / f"{series_uid}.json"

    async def load(self, series_uid: str) -> dict[str, Any] | None:
        path = self._path(series_uid)
        return None if path is None else await asyncio.to_thread(_read_json, path)

    async def save(self, series_uid: str, doc: dict[str, Any]) -> None:
        path = self._path(series_uid)
        if path is not None:
            await asyncio.to_thread(_replace_json, path, doc)

    async def drop(self, series_uid: str) -> None:
        path = self._path(series_uid)
        if path is not None:
            await asyncio.to_thread(path.unlink, missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _replace_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        aside.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)


class SeriesMetadataKeeper:
    def __init__(self, kept: KeptTexts, series: Any, locks: Locks) -> None:
        self.kept = kept
        self.series = series  # the series rollups, whose `rev` changes with their series
        self.locks = locks

    async def get(self, series_uid: str) -> KeptMetadata | None:
        doc = await self.kept.load(series_uid)
        if doc is None:
            return None
        return KeptMetadata(doc["study"], series_uid, doc.get("project"), list(doc["parts"]))

    async def rev(self, series_uid: str) -> str | None:
        doc = await self.series.find_one({"_id": series_uid}, {"rev": 1})
        return str(doc["rev"]) if doc and doc.get("rev") else None

    async def keep(self, text: KeptMetadata, rev: str) -> bool:
        """Keep a rendering made from the series at `rev`, unless the series changed since."""
        if sum(map(len, text.parts)) > MAX_KEPT_CHARS:
            return False
        async with self.locks.hold(f"rollup:{text.study}"):
            if await self.rev(text.series) != rev:
                return False
            doc = {"study": text.study, "project": text.project, "parts": text.parts}
            await self.kept.save(text.series, doc)
        return True

    async def forget(self, series_uids: list[str]) -> None:
        """Drop the kept text of series that change; the caller holds their study's lock."""
        for series_uid in series_uids:
            await self.kept.drop(series_uid)
