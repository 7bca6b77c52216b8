"""STOW-RS: store instances sent as multipart/related application/dicom (PS3.18 10.5).

Each part is streamed to a temporary file, then handed to the same ingest as every source.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from cloudpacs.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from cloudpacs.http.media import DICOM_JSON
from cloudpacs.http.services import base_url, services
from cloudpacs.ingest import IngestResult, Outcome, Source

PART_CHUNK_BYTES = 1024 * 1024
# PS3.18 Table 10.5.3-2 / PS3.4 Annex C failure reasons
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_DUPLICATE_CONFLICT = 0x0111
FAILURE_WRONG_STUDY = 0xA900
FAILURE_NOT_DICOM_PART = 0xC000
FAILURE_CODES = {"conflict": FAILURE_DUPLICATE_CONFLICT, "wrong-study": FAILURE_WRONG_STUDY}


async def store(request: web.Request) -> web.Response:
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/related"):
        raise UnsupportedMedia('STOW-RS takes multipart/related; type="application/dicom"')
    if 'type="application/dicom+json"' in content_type or "type=application/dicom+json" in content_type:
        raise UnsupportedMedia("STOW-RS of DICOM JSON with bulk data is not supported; send application/dicom")
    svc = services(request)
    expected_study = request.match_info.get("study")
    limit = svc.settings.max_upload_bytes
    tmp_dir = svc.settings.home / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    results: list[IngestResult] = []
    received = 0
    source = Source("stow", request.remote or "")
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise InvalidRequest("nested multipart bodies are not supported")
        part_type = part.headers.get("Content-Type", "application/dicom").split(";")[0].strip()
        path = Path(tempfile.mkstemp(dir=tmp_dir, suffix=".dcm")[1])
        try:
            received += await _save_part(part, path, limit - received)
            if part_type.lower() != "application/dicom":
                results.append(
                    IngestResult(Outcome.REJECTED, reason=f"part is {part_type}, not application/dicom", reason_code="media-type")
                )
                continue
            results.append(await svc.ingestor.ingest(path, source, expected_study))
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
    if not results:
        raise InvalidRequest("the multipart body has no parts")
    return _answer(results, base_url(request), expected_study)


async def _save_part(part: BodyPartReader, path: Path, budget: int) -> int:
    size = 0
    with path.open("wb") as fp:
        while chunk := await part.read_chunk(PART_CHUNK_BYTES):
            size += len(chunk)
            if size > budget:
                raise PayloadTooLarge("request body is over the upload limit (max_upload_bytes)")
            await asyncio.to_thread(fp.write, chunk)
    return size


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
