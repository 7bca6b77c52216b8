"""Series metadata kept rendered (WADO-RS `.../series/{series}/metadata`) for the next request.

A series' metadata is the DICOM JSON of every instance in it: rendering it reads each
instance's read document (one lookup each, decoded by FerretDB) and encodes it. The text is
kept in `kept_metadata` by series UID, split where the request's base URL goes (in every
BulkDataURI), so that the next request is one lookup and a join.

Never stale: ingest, deletion, overwrites and rebuilds change a series under its study's
rollup lock, give it a new `rev` (a random token) and forget its text there (InstanceStore).
A reader keeps what it rendered only under the same lock, and only if the series' `rev` is
still the one it read before rendering; so a text that misses a change is never kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloudpacs.storage.locks import Locks

# Kept only below this size: MongoDB documents are limited to 16 MiB, and a series this
# large is read in a stream rather than held in memory.
MAX_KEPT_CHARS = 8 * 1024 * 1024


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


class SeriesMetadataKeeper:
    def __init__(self, kept: Any, series: Any, locks: Locks) -> None:
        self.kept = kept  # storage.schema.KEPT_METADATA
        self.series = series  # the series rollups, whose `rev` changes with their series
        self.locks = locks

    async def get(self, series_uid: str) -> KeptMetadata | None:
        doc = await self.kept.find_one({"_id": series_uid})
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
            await self.kept.replace_one({"_id": text.series}, doc, upsert=True)
        return True

    async def forget(self, series_uids: list[str]) -> None:
        """Drop the kept text of series that change; the caller holds their study's lock."""
        for series_uid in series_uids:
            await self.kept.delete_one({"_id": series_uid})
