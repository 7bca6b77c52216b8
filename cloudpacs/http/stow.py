"""STOW-RS: store instances sent as multipart/related application/dicom (PS3.18 10.5).

The whole body is received first, each part streamed to a temporary file (the request is
refused with 413, storing nothing, once it passes max_upload_bytes or max_stow_parts); then
every part is handed to the same ingest as every source. At most max_concurrent_uploads
requests are served at once; more are refused at once with 503 and Retry-After, before
their body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError

from cloudpacs.auth.principal import Role
from cloudpacs.errors import (
    Forbidden,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMedia,
)
from cloudpacs.http.access import CLIENT, note_for_audit, principal
from cloudpacs.http.media import DICOM_JSON
from cloudpacs.http.services import base_url, services
from cloudpacs.ingest import Ingestor, IngestResult, Outcome, Source

PART_CHUNK_BYTES = 1024 * 1024
DICOM = "application/dicom"
# PS3.18 Table 10.5.3-2 / PS3.4 Annex C failure reasons
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_DUPLICATE_CONFLICT = 0x0111
FAILURE_WRONG_STUDY = 0xA900
FAILURE_NOT_DICOM_PART = 0xC000
TOO_LARGE = "request body is over the upload limit (max_upload_bytes)"
FAILURE_CODES = {
    "conflict": FAILURE_DUPLICATE_CONFLICT,
    "uid-in-use": FAILURE_DUPLICATE_CONFLICT,  # the UID duplicates one held elsewhere
    "wrong-study": FAILURE_WRONG_STUDY,
}


@dataclass(frozen=True)
class ReceivedPart:
    path: Path
    media_type: str


class UploadSlots:
    """A count of STOW-RS requests in progress that refuses, rather than queues, one too
    many: a queued upload would hold its connection (and its body) while it waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if self.in_use >= self.limit:
            raise Overloaded(
                f"too many uploads in progress (max_concurrent_uploads = {self.limit}); retry later"
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1


UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)


async def store(request: web.Request) -> web.Response:
    _check_content_type(request.headers.get("Content-Type", ""))
    svc = services(request)
    source = _source(request, svc.settings.default_project)
    limit = svc.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(TOO_LARGE)
    with request.app[UPLOAD_SLOTS].take():
        return await _store(request, limit, source)


async def _store(request: web.Request, limit: int, source: Source) -> web.Response:
    svc = services(request)
    tmp_root = svc.settings.home / "tmp"
    await asyncio.to_thread(tmp_root.mkdir, parents=True, exist_ok=True)
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=tmp_root))
    try:
        parts = await _receive(request, folder, limit, svc.settings.max_stow_parts)
        if not parts:
            raise InvalidRequest("the multipart body has no parts")
        expected_study = request.match_info.get("study")
        results = await _ingest_all(
            svc.ingestor, parts, source, expected_study, svc.settings.ingest_concurrency
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    return _answer(results, base_url(request), expected_study)


def _source(request: web.Request, default_project: str) -> Source:
    """Stored into the URL's project, else the caller's default project, else the
    archive's default; the caller must be a contributor there."""
    caller = principal(request)
    project = request.match_info.get("project") or caller.default_project or default_project
    source = Source("stow", request.get(CLIENT) or "", project=project, user=caller.subject)
    if not caller.allows(Role.CONTRIBUTOR, project):
        raise Forbidden(f"no contributor role in project {project}")
    note_for_audit(request, project=project)
    return source


def _check_content_type(header: str) -> None:
    media = parse_mimetype(header)
    if (media.type, media.subtype) != ("multipart", "related"):
        raise UnsupportedMedia(f'STOW-RS takes multipart/related; type="{DICOM}"')
    part_type = media.parameters.get("type", DICOM).lower()
    if part_type == "application/dicom+json":
        raise UnsupportedMedia(
            "STOW-RS of DICOM JSON with bulk data is not supported; send application/dicom"
        )
    if part_type != DICOM:
        raise UnsupportedMedia(f'STOW-RS takes multipart/related; type="{DICOM}"')


async def _receive(
    request: web.Request, folder: Path, limit: int, max_parts: int
) -> list[ReceivedPart]:
    """Every part of the body, each in its own file under `folder`."""
    received: list[ReceivedPart] = []
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("nested multipart bodies are not supported")
            if len(received) == max_parts:
                raise PayloadTooLarge(
                    f"the multipart body has more than {max_parts} parts (max_stow_parts)"
                )
            media_type = part.headers.get("Content-Type", DICOM).split(";")[0].strip().lower()
            path = folder / f"{len(received)}.dcm"
            total += await _save_part(part, path, limit - total)
            received.append(ReceivedPart(path, media_type))
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    return received


async def _save_part(part: BodyPartReader, path: Path, budget: int) -> int:
    size = 0
    fp = await asyncio.to_thread(path.open, "wb")
    try:
        while chunk := await part.read_chunk(PART_CHUNK_BYTES):
            size += len(chunk)
            if size > budget:
                raise PayloadTooLarge(TOO_LARGE)
            await asyncio.to_thread(fp.write, chunk)
    finally:
        await asyncio.to_thread(fp.close)
    return size


async def _ingest_all(
    ingestor: Ingestor,
    parts: list[ReceivedPart],
    source: Source,
    expected_study: str | None,
    concurrency: int,
) -> list[IngestResult]:
    """The parts' results in part order. Up to `concurrency` parts are ingested at once, so
    the parts of one request share the store's batched writes (storage.group_commit); the
    first failure cancels the others, as the request then fails."""
    slots = asyncio.Semaphore(concurrency)

    async def one(part: ReceivedPart) -> IngestResult:
        async with slots:
            return await _ingest(ingestor, part, source, expected_study)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(part)) for part in parts]
    except BaseExceptionGroup as failed:  # the first failure, as the sequential loop raised
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _ingest(
    ingestor: Ingestor, part: ReceivedPart, source: Source, expected_study: str | None
) -> IngestResult:
    if part.media_type != DICOM:
        return IngestResult(
            Outcome.REJECTED,
            reason=f"part is {part.media_type}, not {DICOM}",
            reason_code="media-type",
        )
    return await ingestor.ingest(part.path, source, expected_study)


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _answer(results: list[IngestResult], base: str, expected_study: str | None) -> web.Response:
    referenced, failed = [], []
    studies = set()
    for result in results:
        item = {"00081150": _uid(result.sop_class_uid), "00081155": _uid(result.sop_uid)}
        if result.outcome is Outcome.REJECTED:
            code = FAILURE_CODES.get(result.reason_code or "", FAILURE_CANNOT_UNDERSTAND)
            item["00081197"] = {"vr": "US", "Value": [code]}
            item["00000902"] = {"vr": "LO", "Value": [(result.reason or "")[:64]]}
            failed.append(item)
        else:
            studies.add(result.study_uid)
            url = (
                f"{base}/studies/{result.study_uid}/series/{result.series_uid}"
                f"/instances/{result.sop_uid}"
            )
            item["00081190"] = {"vr": "UR", "Value": [url]}
            referenced.append(item)
    body: dict[str, Any] = {}
    study = expected_study or (next(iter(studies)) if len(studies) == 1 else None)
    if study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else 202 if referenced else 409
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=DICOM_JSON)
