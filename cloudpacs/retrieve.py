"""WADO-RS retrieve service: instances, metadata, bulk data and frames, streamed from GridFS.

Stored bytes are streamed chunk by chunk; only a conversion to Explicit VR Little Endian or a
frame decode holds one instance (or one frame) in memory, in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cloudpacs.dicom import transcode
from cloudpacs.dicom.jsonmodel import with_absolute_bulk_uris
from cloudpacs.errors import InvalidRequest, NotAcceptable, NotFound
from cloudpacs.search import Scope
from cloudpacs.storage.instances import InstanceStore

AS_STORED = "*"
_LIST_FIELDS = {"file_id": 1, "transfer_syntax": 1, "study": 1, "series": 1, "size": 1}
# Attributes a frame decoder needs, by keyword, with their tags in the stored DICOM JSON.
_PIXEL_ATTRIBUTES = {
    "Rows": "00280010",
    "Columns": "00280011",
    "BitsAllocated": "00280100",
    "BitsStored": "00280101",
    "HighBit": "00280102",
    "PixelRepresentation": "00280103",
    "SamplesPerPixel": "00280002",
    "PhotometricInterpretation": "00280004",
    "PlanarConfiguration": "00280006",
}


@dataclass(frozen=True)
class Part:
    content_type: str
    body: AsyncIterator[bytes]
    location: str | None = None


def instance_url(base_url: str, doc: dict[str, Any]) -> str:
    return f"{base_url}/studies/{doc['study']}/series/{doc['series']}/instances/{doc['_id']}"


class RetrieveService:
    def __init__(self, store: InstanceStore) -> None:
        self.store = store

    async def _list(self, scope: Scope, sop: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"study": scope.study}
        if scope.series:
            query["series"] = scope.series
        if sop:
            query["_id"] = sop
        docs = [doc async for doc in self.store.iter_instances(query, _LIST_FIELDS)]
        if not docs:
            raise NotFound("no such study, series or instance")
        return docs

    async def instances(
        self, scope: Scope, sop: str | None, transfer_syntax: str, base_url: str
    ) -> AsyncIterator[Part]:
        """Parts of a multipart/related application/dicom answer; checked before streaming."""
        docs = await self._list(scope, sop)
        if transfer_syntax != AS_STORED:
            unable = {
                d["transfer_syntax"]
                for d in docs
                if d["transfer_syntax"] != transfer_syntax
                and not (
                    transfer_syntax == transcode.EXPLICIT_LE
                    and transcode.can_make_explicit_le(d["transfer_syntax"])
                )
            }
            if unable:
                raise NotAcceptable(
                    f"cannot convert from {', '.join(sorted(unable))} to {transfer_syntax}; "
                    "ask for transfer-syntax=* to get the stored bytes"
                )
        return self._instance_parts(docs, transfer_syntax, base_url)

    async def _instance_parts(
        self, docs: list[dict[str, Any]], transfer_syntax: str, base_url: str
    ) -> AsyncIterator[Part]:
        for doc in docs:
            stored = doc["transfer_syntax"]
            if transfer_syntax in (AS_STORED, stored):
                body = self.store.stream_file(doc["file_id"])
                out_ts = stored
            else:
                body = self._converted(doc["file_id"])
                out_ts = transcode.EXPLICIT_LE
            yield Part(
                f'application/dicom; transfer-syntax={out_ts}', body, instance_url(base_url, doc)
            )

    async def _converted(self, file_id: Any) -> AsyncIterator[bytes]:
        data = b"".join([chunk async for chunk in self.store.stream_file(file_id)])
        yield await asyncio.to_thread(transcode.to_explicit_le, data)

    async def metadata(
        self, scope: Scope, sop: str | None, base_url: str
    ) -> AsyncIterator[dict[str, Any]]:
        query: dict[str, Any] = {"study": scope.study}
        if scope.series:
            query["series"] = scope.series
        if sop:
            query["_id"] = sop
        found = False
        projection = {"meta": 1, "meta_file_id": 1, "study": 1, "series": 1}
        async for doc in self.store.iter_instances(query, projection):
            found = True
            meta = await self.store.full_meta(doc)
            yield with_absolute_bulk_uris(meta, instance_url(base_url, doc))
        if not found:
            raise NotFound("no such study, series or instance")

    async def _instance_doc(self, scope: Scope, sop: str, projection: dict[str, Any]) -> dict[str, Any]:
        docs = await self.store.find(
            "instances",
            {"_id": sop, "study": scope.study, "series": scope.series},
            projection=projection,
            limit=1,
        )
        if not docs:
            raise NotFound("no such instance")
        return docs[0]

    async def bulkdata(self, scope: Scope, sop: str, path: str) -> tuple[int, AsyncIterator[bytes]]:
        doc = await self._instance_doc(scope, sop, {"bulk": 1, "file_id": 1, "pixels": 1})
        ref = (doc.get("bulk") or {}).get(path)
        if ref is None:
            raise NotFound(f"no bulk data at {path}")
        offset, length = ref
        if offset < 0:  # position unknown (deflated instance): parse the whole instance
            data = b"".join([c async for c in self.store.stream_file(doc["file_id"])])
            value = await asyncio.to_thread(transcode.element_bytes, data, path)
            return len(value), _once(value)
        if length == 0xFFFFFFFF:  # encapsulated pixel data: its extent was measured at ingest
            length = doc["pixels"]["total_length"]
        return length, self.store.read_range(doc["file_id"], offset, length)

    async def frames(
        self, scope: Scope, sop: str, numbers: list[int], want_stored: bool
    ) -> tuple[str, list[AsyncIterator[bytes]]]:
        """The media type and bodies of the requested frames (1-based numbers)."""
        doc = await self._instance_doc(
            scope, sop, {"pixels": 1, "file_id": 1, "transfer_syntax": 1, "meta": 1}
        )
        pixels = doc.get("pixels")
        if not pixels:
            raise NotFound("instance has no frame-addressable pixel data")
        frames = pixels["frames"]
        bad = [n for n in numbers if not 1 <= n <= len(frames)]
        if bad:
            raise InvalidRequest(f"frame numbers out of range 1..{len(frames)}: {bad}")
        stored = doc["transfer_syntax"]
        if not pixels["encapsulated"]:
            if stored == transcode.EXPLICIT_BE:
                raise NotAcceptable("frames of big-endian instances cannot be sent as stored")
            bodies = [self._frame_bytes(doc, frames[n - 1]) for n in numbers]
            return "application/octet-stream", bodies
        if want_stored:
            media = transcode.FRAME_MEDIA_TYPES.get(stored, "application/octet-stream")
            bodies = [self._frame_bytes(doc, frames[n - 1]) for n in numbers]
            return f"{media}; transfer-syntax={stored}", bodies
        if not transcode.can_make_explicit_le(stored):
            raise NotAcceptable(f"frames in {stored} cannot be decoded here")
        return "application/octet-stream", [self._decoded(doc, frames[n - 1]) for n in numbers]

    async def _frame_bytes(self, doc: dict[str, Any], frame: dict[str, Any]) -> AsyncIterator[bytes]:
        for offset, length in zip(frame["o"], frame["l"], strict=True):
            async for chunk in self.store.read_range(doc["file_id"], offset, length):
                yield chunk

    async def _decoded(self, doc: dict[str, Any], frame: dict[str, Any]) -> AsyncIterator[bytes]:
        fragments = []
        for offset, length in zip(frame["o"], frame["l"], strict=True):
            fragments.append(b"".join([c async for c in self.store.read_range(doc["file_id"], offset, length)]))
        meta = doc.get("meta", {})
        attrs = {
            keyword: (meta[tag]["Value"][0])
            for keyword, tag in _PIXEL_ATTRIBUTES.items()
            if meta.get(tag, {}).get("Value")
        }
        yield await asyncio.to_thread(
            transcode.decode_frame, attrs, doc["transfer_syntax"], fragments
        )


async def _once(value: bytes) -> AsyncIterator[bytes]:
    yield value
