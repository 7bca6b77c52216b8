"""WADO-RS retrieve service: instances, metadata, bulk data and frames, streamed from the
archive's file store.

Stored bytes are streamed chunk by chunk; only a conversion to Explicit VR Little Endian or a
frame decode holds one instance (or one frame) in memory, in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudpacs.dicom import transcode
from cloudpacs.dicom.jsonmodel import with_absolute_bulk_uris
from cloudpacs.errors import InvalidRequest, NotAcceptable, NotFound
from cloudpacs.search import Scope
from cloudpacs.storage.directory_files import LocalFile
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.kept_metadata import MAX_KEPT_CHARS, KeptMetadata

AS_STORED = "*"
PIXEL_DATA = "7FE00010"
UNDEFINED_LENGTH = 0xFFFFFFFF
_LIST_FIELDS = {"file_id": 1, "transfer_syntax": 1, "study": 1, "series": 1, "size": 1}
_PIXEL_FIELDS = {
    "pixels": 1,
    "bulk": 1,
    "file_id": 1,
    "transfer_syntax": 1,
    "meta": 1,
    "meta_file_id": 1,
}
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
    path: Path | None = None  # the body is this whole local file (it may be sent by sendfile)
    opened: LocalFile | None = None  # `path`, already open (whoever sends it closes it)


async def _just(part: Part) -> AsyncIterator[Part]:
    yield part


def instance_url(base_url: str, doc: dict[str, Any]) -> str:
    return f"{base_url}/studies/{doc['study']}/series/{doc['series']}/instances/{doc['_id']}"


class RetrieveService:
    def __init__(self, store: InstanceStore) -> None:
        self.store = store

    async def check_files(self) -> None:
        """Unavailable if the stored files cannot be reached (readiness)."""
        await self.store.check_files()

    async def _matching(
        self, scope: Scope, sop: str | None, projection: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Instances of the scope (and SOP Instance UID), in retrieval order."""
        if sop:
            doc = await self._by_uid(scope, sop, projection)
            if doc is not None:
                yield doc
            return
        assert scope.study  # every WADO-RS path names its study
        listed = await self.store.listed_instances(scope.study, scope.series, projection)
        if listed is None:  # no member lists for this study (yet): query instead
            async for doc in self.store.iter_instances(scope.instance_filter(), projection):
                yield doc
            return
        for doc in listed:
            if scope.admits(doc):
                yield doc

    async def _by_uid(
        self, scope: Scope, sop: str, projection: dict[str, Any]
    ) -> dict[str, Any] | None:
        """One instance, found by its _id alone (the only condition FerretDB answers from
        its primary key instead of a scan), then checked against the URL's study/series and
        the caller's projects (anything else is not found: existence is not revealed)."""
        fields = {**projection, "study": 1, "series": 1, "project": 1}
        docs = await self.store.read_instances([sop], fields)
        if not docs:
            return None
        return docs[0] if scope.admits(docs[0]) else None

    async def _list(self, scope: Scope, sop: str | None = None) -> list[dict[str, Any]]:
        docs = [doc async for doc in self._matching(scope, sop, _LIST_FIELDS)]
        if not docs:
            raise NotFound("no such study, series or instance")
        return docs

    async def instances(
        self, scope: Scope, sop: str | None, transfer_syntax: str, base_url: str
    ) -> AsyncIterator[Part]:
        """Parts of a multipart/related application/dicom answer; checked before streaming."""
        if sop is not None:
            opened = await self._opened_instance(scope, sop, transfer_syntax, base_url)
            if opened is not None:
                return _just(opened)
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

    async def _opened_instance(
        self, scope: Scope, sop: str, transfer_syntax: str, base_url: str
    ) -> Part | None:
        """One instance as stored, its local file already open (a place cache hit costs no
        database lookup: storage.place_cache); None when it needs the general path."""
        found = await self.store.open_instance(sop)
        if found is None:
            return None
        doc, local = found
        stored = doc["transfer_syntax"]
        if not scope.admits(doc) or transfer_syntax not in (AS_STORED, stored):
            local.source.close()
            if not scope.admits(doc):
                raise NotFound("no such study, series or instance")
            return None
        return Part(
            f"application/dicom; transfer-syntax={stored}",
            self.store.stream_file(doc["file_id"]),
            instance_url(base_url, doc),
            local.path,
            local,
        )

    async def _instance_parts(
        self, docs: list[dict[str, Any]], transfer_syntax: str, base_url: str
    ) -> AsyncIterator[Part]:
        for doc in docs:
            stored = doc["transfer_syntax"]
            path = None
            if transfer_syntax in (AS_STORED, stored):
                body = self.store.stream_file(doc["file_id"])
                out_ts = stored
                path = self.store.local_path(doc["file_id"])
            else:
                body = self._converted(doc["file_id"])
                out_ts = transcode.EXPLICIT_LE
            content_type = f"application/dicom; transfer-syntax={out_ts}"
            yield Part(content_type, body, instance_url(base_url, doc), path)

    async def _converted(self, file_id: Any) -> AsyncIterator[bytes]:
        data = await self._whole_file(file_id)
        try:
            yield await asyncio.to_thread(transcode.to_explicit_le, data)
        except transcode.TranscodeError as exc:
            raise NotAcceptable(
                f"{exc}; ask for transfer-syntax=* to get the stored bytes"
            ) from exc

    async def _whole_file(self, file_id: Any) -> bytes:
        return b"".join([chunk async for chunk in self.store.stream_file(file_id)])

    async def _read(self, file_id: Any, offset: int, length: int) -> bytes:
        return b"".join([c async for c in self.store.read_range(file_id, offset, length)])

    async def metadata(self, scope: Scope, sop: str | None, base_url: str) -> AsyncIterator[str]:
        """The DICOM JSON array of the instances in scope, in pieces of its text; NotFound
        before the first piece. A series' text is kept for the next request
        (storage.kept_metadata), which then costs one lookup."""
        keeper, rev = self.store.kept_metadata, None
        if sop is None and scope.series:
            kept = await keeper.get(scope.series)
            if kept is not None and scope.admits(kept.place()):
                yield kept.render(base_url)
                return
            rev = await keeper.rev(scope.series)
        placeholder = uuid.uuid4().hex  # stands for the base URL in the kept text
        base = json.dumps(base_url, ensure_ascii=False)[1:-1]
        texts: list[str] = []  # with the placeholder, while the series may be kept
        size, project = 0, None
        projection = {"meta": 1, "meta_file_id": 1, "study": 1, "series": 1, "project": 1}
        async for doc in self._matching(scope, sop, projection):
            meta = await self.store.full_meta(doc)
            text = json.dumps(
                with_absolute_bulk_uris(meta, instance_url(placeholder, doc)), ensure_ascii=False
            )
            yield ("," if size else "[") + text.replace(placeholder, base)
            size += len(text) + 1
            project = doc.get("project")
            if rev is not None and size <= MAX_KEPT_CHARS:
                texts.append(text)
        if not size:
            raise NotFound("no such study, series or instance")
        yield "]"
        if rev is not None and size <= MAX_KEPT_CHARS and scope.study and scope.series:
            parts = ("[" + ",".join(texts) + "]").split(placeholder)
            await keeper.keep(KeptMetadata(scope.study, scope.series, project, parts), rev)

    async def _instance_doc(
        self, scope: Scope, sop: str, projection: dict[str, Any]
    ) -> dict[str, Any]:
        doc = await self._by_uid(scope, sop, projection)
        if doc is None:
            raise NotFound("no such instance")
        return doc

    async def bulkdata(self, scope: Scope, sop: str, path: str) -> tuple[int, AsyncIterator[bytes]]:
        """The value of one bulk element, little endian (PS3.18 8.7.3.3.2)."""
        doc = await self._instance_doc(scope, sop, _PIXEL_FIELDS)
        ref = (doc.get("bulk") or {}).get(path)
        if ref is None:
            raise NotFound(f"no bulk data at {path}")
        offset, length = ref
        nested_encapsulated = length == UNDEFINED_LENGTH and path != PIXEL_DATA
        if offset < 0 or nested_encapsulated:  # extent unknown: parse the whole instance
            data = await self._whole_file(doc["file_id"])
            value = await asyncio.to_thread(transcode.element_bytes, data, path)
            return len(value), _once(value)
        if length == UNDEFINED_LENGTH:  # encapsulated pixel data: extent measured at ingest
            length = doc["pixels"]["total_length"]
        if doc.get("transfer_syntax") == transcode.EXPLICIT_BE:
            word = _word_size(await self.store.full_meta(doc), path)
            if word > 1:
                return length, _swapped_chunks(
                    self.store.read_range(doc["file_id"], offset, length), word
                )
        return length, self.store.read_range(doc["file_id"], offset, length)

    async def frames(
        self, scope: Scope, sop: str, numbers: list[int], want_stored: bool
    ) -> tuple[str, list[AsyncIterator[bytes]]]:
        """The media type and bodies of the requested frames (1-based numbers)."""
        doc = await self._instance_doc(scope, sop, _PIXEL_FIELDS)
        stored = doc["transfer_syntax"]
        pixels = doc.get("pixels")
        if not pixels and stored == transcode.DEFLATED_LE and PIXEL_DATA in (doc.get("bulk") or {}):
            return await self._deflated_frames(doc, numbers)
        if not pixels:
            raise NotFound("instance has no frame-addressable pixel data")
        frames = pixels["frames"]
        _check_frame_numbers(numbers, len(frames))
        if not pixels["encapsulated"]:
            if stored == transcode.EXPLICIT_BE:
                return "application/octet-stream", await self._big_endian_frames(doc, numbers)
            bodies = [self._frame_bytes(doc, frames[n - 1]) for n in numbers]
            return "application/octet-stream", bodies
        if want_stored:
            media = transcode.FRAME_MEDIA_TYPES.get(stored, "application/octet-stream")
            bodies = [self._frame_bytes(doc, frames[n - 1]) for n in numbers]
            return f"{media}; transfer-syntax={stored}", bodies
        if not transcode.can_make_explicit_le(stored):
            raise NotAcceptable(f"frames in {stored} cannot be decoded here")
        return "application/octet-stream", [self._decoded(doc, frames[n - 1]) for n in numbers]

    async def _frame_bytes(
        self, doc: dict[str, Any], frame: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        for offset, length in zip(frame["o"], frame["l"], strict=True):
            async for chunk in self.store.read_range(doc["file_id"], offset, length):
                yield chunk

    async def _decoded(self, doc: dict[str, Any], frame: dict[str, Any]) -> AsyncIterator[bytes]:
        fragments = [
            await self._read(doc["file_id"], offset, length)
            for offset, length in zip(frame["o"], frame["l"], strict=True)
        ]
        meta = await self.store.full_meta(doc)
        attrs = {
            keyword: (meta[tag]["Value"][0])
            for keyword, tag in _PIXEL_ATTRIBUTES.items()
            if meta.get(tag, {}).get("Value")
        }
        try:
            yield await asyncio.to_thread(
                transcode.decode_frame, attrs, doc["transfer_syntax"], fragments
            )
        except transcode.TranscodeError as exc:
            raise NotAcceptable(f"{exc}; ask for transfer-syntax=* to get it as stored") from exc

    async def _big_endian_frames(
        self, doc: dict[str, Any], numbers: list[int]
    ) -> list[AsyncIterator[bytes]]:
        """Native big endian frames, byte-swapped to little endian (frames on the web are)."""
        value_offset = doc["bulk"][PIXEL_DATA][0]
        word = _word_size(await self.store.full_meta(doc), PIXEL_DATA)
        frames = doc["pixels"]["frames"]
        return [self._swapped(doc, frames[n - 1], value_offset, word) for n in numbers]

    async def _swapped(
        self, doc: dict[str, Any], frame: dict[str, Any], value_offset: int, word: int
    ) -> AsyncIterator[bytes]:
        offset, length = frame["o"][0], frame["l"][0]
        # whole words of the value: a frame of 8-bit OW data may start or end mid-word
        start = offset - (offset - value_offset) % word
        end = offset + length
        end += -(end - value_offset) % word
        data = await self._read(doc["file_id"], start, end - start)
        swapped = await asyncio.to_thread(transcode.swap_words, data, word)
        yield swapped[offset - start : offset - start + length]

    async def _deflated_frames(
        self, doc: dict[str, Any], numbers: list[int]
    ) -> tuple[str, list[AsyncIterator[bytes]]]:
        """Frames of a deflated instance, whose offsets are unknown: parse the whole instance."""
        data = await self._whole_file(doc["file_id"])
        frames = await asyncio.to_thread(transcode.native_frames, data)
        if not frames:
            raise NotFound("instance has no frame-addressable pixel data")
        _check_frame_numbers(numbers, len(frames))
        return "application/octet-stream", [_once(frames[n - 1]) for n in numbers]


def _check_frame_numbers(numbers: list[int], count: int) -> None:
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise InvalidRequest(f"frame numbers out of range 1..{count}: {bad}")


def _word_size(meta: dict[str, Any], path: str) -> int:
    """The byte-swap unit of the big endian bulk value at `path` ("00880200/0/7FE00010")."""
    parts = path.split("/")
    for tag, index in zip(parts[:-1:2], parts[1::2], strict=True):
        meta = meta[tag]["Value"][int(index)]
    bits = (meta.get("00280100", {}).get("Value") or [0])[0]
    return transcode.word_size(meta[parts[-1]]["vr"], parts[-1] == PIXEL_DATA, int(bits))


async def _once(value: bytes) -> AsyncIterator[bytes]:
    yield value


async def _swapped_chunks(chunks: AsyncIterator[bytes], word: int) -> AsyncIterator[bytes]:
    """Byte-swap a stream word by word, carrying a word split between chunks over."""
    carry = b""
    async for chunk in chunks:
        data = carry + chunk
        whole = len(data) - len(data) % word
        carry = data[whole:]
        yield transcode.swap_words(data[:whole], word)  # one chunk: cheap
    if carry:
        yield carry
