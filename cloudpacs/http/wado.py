"""WADO-RS: instances, metadata, bulk data and frames (PS3.18 10.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from cloudpacs.auth.principal import Role
from cloudpacs.errors import InvalidRequest
from cloudpacs.http.access import visible_projects
from cloudpacs.http.media import (
    DICOM_JSON,
    abort_started,
    negotiate_bulkdata,
    negotiate_dicom,
    negotiate_frames,
    negotiate_json,
    single_parts,
    stream_multipart,
)
from cloudpacs.http.services import base_url, services
from cloudpacs.retrieve import Part
from cloudpacs.search import Scope


def _scope(request: web.Request) -> Scope:
    info = request.match_info
    return Scope(info["study"], info.get("series"), visible_projects(request, Role.READER))


async def retrieve(request: web.Request) -> web.StreamResponse:
    transfer_syntax = negotiate_dicom(request.headers.get("Accept"))
    parts = await services(request).retrieve.instances(
        _scope(request), request.match_info.get("instance"), transfer_syntax, base_url(request)
    )
    return await stream_multipart(request, "application/dicom", parts)


async def metadata(request: web.Request) -> web.StreamResponse:
    negotiate_json(request.headers.get("Accept"))
    pieces = services(request).retrieve.metadata(
        _scope(request), request.match_info.get("instance"), base_url(request)
    )
    first = await anext(pieces)  # raises NotFound before the answer starts
    response = web.StreamResponse(headers={"Content-Type": DICOM_JSON})
    await response.prepare(request)
    try:
        await response.write(first.encode())
        async for piece in pieces:
            await response.write(piece.encode())
    except BaseException:
        abort_started(request)  # never let a cut-short array look complete
        raise
    await response.write_eof()
    return response


async def bulkdata(request: web.Request) -> web.StreamResponse:
    negotiate_bulkdata(request.headers.get("Accept"))
    _, body = await services(request).retrieve.bulkdata(
        _scope(request), request.match_info["instance"], request.match_info["path"]
    )

    async def one() -> AsyncIterator[Part]:
        yield Part("application/octet-stream", body)

    return await stream_multipart(request, "application/octet-stream", one())


async def frames(request: web.Request) -> web.StreamResponse:
    want_stored = negotiate_frames(request.headers.get("Accept"))
    numbers = _frame_numbers(request.match_info["frames"])
    content_type, bodies = await services(request).retrieve.frames(
        _scope(request), request.match_info["instance"], numbers, want_stored
    )
    part_type = content_type.split(";")[0]
    return await stream_multipart(request, part_type, single_parts(content_type, bodies))


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InvalidRequest(f"frame list must be comma-separated numbers, not {text!r}") from None
    if not numbers:
        raise InvalidRequest("empty frame list")
    return numbers
