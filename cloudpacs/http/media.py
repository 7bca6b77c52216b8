"""Media types: Accept negotiation (PS3.18 8.7) and streamed multipart/related answers."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from cloudpacs.dicom.transcode import EXPLICIT_LE
from cloudpacs.errors import NotAcceptable, NotFound
from cloudpacs.retrieve import AS_STORED, Part

DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def parse_accept(header: str | None) -> list[MediaRange]:
    """Accept header -> media ranges, best first. A missing header accepts anything."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in _split_outside_quotes(header, ","):
        pieces = _split_outside_quotes(item, ";")
        media = pieces[0].strip().lower()
        if not media:
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def negotiate_json(header: str | None) -> None:
    """QIDO and metadata answer application/dicom+json; 406 if the client takes neither JSON."""
    for r in parse_accept(header):
        if r.q > 0 and r.type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise NotAcceptable(f"this resource is available as {DICOM_JSON} only")


def negotiate_dicom(header: str | None) -> str:
    """The transfer syntax to send instances in: '*' for as stored (PS3.18 8.7.3.5)."""
    for r in parse_accept(header):
        if r.q <= 0:
            continue
        if r.type in ("*/*", "multipart/*") or (
            r.type == "multipart/related"
            and r.params.get("type", "application/dicom") in ("application/dicom", "*/*")
        ):
            return _transfer_syntax(r)
    raise NotAcceptable('instances are available as multipart/related; type="application/dicom"')


def _transfer_syntax(r: MediaRange) -> str:
    requested = r.params.get("transfer-syntax", EXPLICIT_LE)
    if requested in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2"):
        # PS3.18 8.7.3.5.2: Implicit VR and Big Endian are never sent over the web
        raise NotAcceptable(f"transfer syntax {requested} is not allowed by DICOMweb")
    return AS_STORED if requested == "*" else requested


def negotiate_frames(header: str | None) -> bool:
    """Whether frames may be sent as stored (compressed) rather than decoded."""
    for r in parse_accept(header):
        if r.q <= 0:
            continue
        part_type = r.params.get("type", "application/octet-stream")
        syntax = r.params.get("transfer-syntax")
        if r.type in ("*/*", "multipart/*"):
            return False
        if r.type == "multipart/related":
            if part_type == "application/octet-stream":
                return syntax == "*"
            if part_type.startswith("image/") or part_type == "*/*":
                return True
    raise NotAcceptable(
        'frames are available as multipart/related; type="application/octet-stream"'
    )


def negotiate_bulkdata(header: str | None) -> None:
    for r in parse_accept(header):
        if r.q > 0 and (
            r.type in ("*/*", "multipart/*", "application/octet-stream")
            or (
                r.type == "multipart/related"
                and r.params.get("type", "application/octet-stream")
                in ("application/octet-stream", "*/*")
            )
        ):
            return
    raise NotAcceptable(
        'bulk data is available as multipart/related; type="application/octet-stream"'
    )


async def stream_multipart(
    request: web.Request, part_type: str, parts: AsyncIterator[Part]
) -> web.StreamResponse:
    """Write parts as they come. aiohttp's MultipartWriter wants sized payloads up front, so
    the (simple, RFC 2046) framing is written here to stream each part from the file store.
    Parts that are all whole local files are handed to the kernel instead (sendfile).

    The first chunk is read before the answer starts, so an error there (a missing file, an
    undecodable instance) still gets its own status. Once the answer has started, a failure
    can only be reported by cutting the connection: the client sees an incomplete body,
    never a truncated one that looks whole."""
    boundary = uuid.uuid4().hex
    content_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    listed = [part async for part in parts]  # bodies are not read yet
    if listed and all(part.path is not None for part in listed):
        return await _send_files(request, content_type, boundary, listed)
    response = web.StreamResponse(headers={"Content-Type": content_type})
    first = listed[0] if listed else None
    first_chunk = await anext(first.body, b"") if first is not None else b""
    await response.prepare(request)
    try:
        if first is not None:
            await _write_part(response, boundary, first, first_chunk)
        for part in listed[1:]:
            await _write_part(response, boundary, part, b"")
        await response.write(f"--{boundary}--\r\n".encode())
    except BaseException:
        abort_started(request)
        raise
    await response.write_eof()
    return response


def _part_head(boundary: str, part: Part) -> bytes:
    header = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
    if part.location:
        header += f"Content-Location: {part.location}\r\n"
    return (header + "\r\n").encode()


async def _write_part(
    response: web.StreamResponse, boundary: str, part: Part, first_chunk: bytes
) -> None:
    await response.write(_part_head(boundary, part) + first_chunk)
    async for chunk in part.body:
        await response.write(chunk)
    await response.write(b"\r\n")


async def _send_files(
    request: web.Request, content_type: str, boundary: str, parts: list[Part]
) -> web.StreamResponse:
    """Whole local files as parts, with a Content-Length, each sent by the kernel. The sizes
    are read and the first file opened in one trip to a worker thread (all a single instance
    needs; none if it came open), so a missing file is still a 404 before the answer starts."""
    paths = [part.path for part in parts if part.path is not None]
    opened = parts[0].opened
    if len(parts) == 1 and opened is not None:
        source: BinaryIO | None = opened.source
        sizes = [opened.size]
    else:
        try:
            source, sizes = await asyncio.to_thread(_open_first, paths)
        except FileNotFoundError:
            raise NotFound("stored file is missing") from None
    heads = [_part_head(boundary, part) for part in parts]
    tail = f"--{boundary}--\r\n".encode()
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = sum(map(len, heads)) + sum(sizes) + 2 * len(parts) + len(tail)
    loop = asyncio.get_running_loop()
    try:
        await response.prepare(request)
        for index, (head, path, size) in enumerate(zip(heads, paths, sizes, strict=True)):
            await response.write(b"\r\n" + head if index else head)
            if source is None:
                source = await asyncio.to_thread(path.open, "rb")
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            if await loop.sendfile(transport, source, 0, size) != size:
                raise OSError(f"stored file {path.name} changed size while sent")
            source.close()
            source = None
        await response.write(b"\r\n" + tail)
    except BaseException:
        abort_started(request)
        raise
    finally:
        if source is not None:
            source.close()
    await response.write_eof()
    return response


def _open_first(paths: list[Path]) -> tuple[BinaryIO | None, list[int]]:
    """(In a worker thread.) The first file, open, and the size of every file."""
    first = paths[0].open("rb")
    try:
        sizes = [os.fstat(first.fileno()).st_size, *(os.stat(p).st_size for p in paths[1:])]
    except BaseException:
        first.close()
        raise
    return first, sizes


def abort_started(request: web.Request) -> None:
    """End a started answer that cannot be completed: close without the final chunk."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def single_parts(
    content_type: str, bodies: list[AsyncIterator[bytes]]
) -> AsyncIterator[Part]:
    for body in bodies:
        yield Part(content_type, body)
