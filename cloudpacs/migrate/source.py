"""A DICOMweb server to copy from: QIDO-RS to enumerate, WADO-RS to fetch instances as stored.

Instances are fetched one by one at their WADO-RS instance URL with
`Accept: multipart/related; type="application/dicom"; transfer-syntax=*`, which asks for the
stored bytes without transcoding (PS3.18 8.7.3.5.2), and the single part is streamed to a
temporary file while its sha256 is computed: never a whole study in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from cloudpacs.errors import CloudPacsError

DICOM_JSON = "application/dicom+json"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
PAGE = 500  # QIDO results asked per request (a server may answer fewer)
READ_BYTES = 1024 * 1024
CONNECT_SECONDS = 10
READ_SECONDS = 120

STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"


class SourceError(CloudPacsError):
    """The source cannot be used as asked (unreachable, refused, not DICOMweb): stop."""


class SourceRetry(CloudPacsError):
    """A transient failure of one request (5xx, 429, reset, timeout): try it again later."""


@dataclass(frozen=True)
class StudyRef:
    uid: str
    instances: int | None  # NumberOfStudyRelatedInstances, when the server gives it


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str


@dataclass(frozen=True)
class Fetched:
    sha256: str
    size: int


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' (as curl's -H) -> (name, value)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise CloudPacsError(f"--header must be 'Name: value', not {text.split(':')[0]!r}...")
    return name.strip(), value.strip()


def _value(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


class DicomwebSource:
    """An open HTTP client to one DICOMweb service root. Use as an async context manager."""

    def __init__(
        self, root: str, headers: Mapping[str, str] | None = None, connections: int = 8
    ) -> None:
        url = URL(root)
        if url.scheme not in ("http", "https") or not url.host:
            raise SourceError(f"the source must be an http:// or https:// URL, not {root!r}")
        self.headers = dict(headers or {})
        if url.user is not None:  # credentials in the URL: a header, never in messages
            auth = aiohttp.BasicAuth(url.user, url.password or "")
            self.headers.setdefault("Authorization", auth.encode())
            url = url.with_user(None)
        self.root = str(url).rstrip("/")
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DicomwebSource:
        self._session = aiohttp.ClientSession(
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_SECONDS, sock_read=READ_SECONDS),
            connector=aiohttp.TCPConnector(limit=self.connections),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with DicomwebSource(...)`"
        return self._session

    def instance_url(self, ref: InstanceRef) -> str:
        return (
            f"{self.root}/studies/{quote(ref.study)}/series/{quote(ref.series)}"
            f"/instances/{quote(ref.sop)}"
        )

    # ---- QIDO-RS ----------------------------------------------------------------------
    async def _qido(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self.root}{path}"
        try:
            async with self.session.get(
                url, params=params, headers={"Accept": DICOM_JSON}
            ) as answer:
                _check_status(answer, url)
                if answer.status == 204:
                    return []
                body = await answer.read()
                kind = answer.headers.get("Content-Type", "")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise SourceRetry(f"cannot reach {url}: {type(exc).__name__}: {exc}"[:300]) from exc
        try:
            items = json.loads(body) if body.strip() else []
        except ValueError:
            items = None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise SourceError(
                f"{url} answered {kind or 'no content type'}, not DICOM JSON: "
                "is this the DICOMweb service root? (Orthanc: http://host:8042/dicom-web)"
            )
        return items

    async def _search(
        self, path: str, params: dict[str, str], key: str, expected: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every result of a search, by the UID in `key`, page after page (limit/offset).

        A short page does not prove the end (a server may cap pages below our limit), so
        the next page is asked for until one is empty or adds nothing new (a server that
        ignores `offset`), or until the `expected` number of results is reached."""
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while expected is None or len(found) < expected:
            page = await self._qido(path, {**params, "limit": str(PAGE), "offset": str(offset)})
            before = len(found)
            for item in page:
                uid = _value(item, key)
                if isinstance(uid, str):
                    found.setdefault(uid, item)
            if len(found) == before:
                break
            offset += len(page)
        return found

    async def check(self) -> None:
        """One small search, so that a wrong URL or missing credentials fail at once."""
        try:
            await self._qido("/studies", {"limit": "1"})
        except SourceRetry as exc:
            raise SourceError(f"the DICOMweb server is not answering: {exc}") from exc

    async def studies(self) -> list[StudyRef]:
        """Every study of the source, in the order the server lists them."""
        params = {"includefield": NUMBER_OF_STUDY_RELATED_INSTANCES}
        found = await self._search("/studies", params, STUDY_INSTANCE_UID)
        refs = []
        for uid, item in found.items():
            count = _value(item, NUMBER_OF_STUDY_RELATED_INSTANCES)
            refs.append(StudyRef(uid, int(count) if count is not None else None))
        return refs

    async def instances(self, study: StudyRef) -> list[InstanceRef]:
        """Every instance of a study."""
        path = f"/studies/{quote(study.uid)}/instances"
        params = {"includefield": SERIES_INSTANCE_UID}
        found = await self._search(path, params, SOP_INSTANCE_UID, study.instances)
        return [
            InstanceRef(study.uid, series, sop)
            for sop, item in found.items()
            if isinstance(series := _value(item, SERIES_INSTANCE_UID), str)
        ]

    # ---- WADO-RS ----------------------------------------------------------------------
    async def fetch(self, ref: InstanceRef, path: Path, max_bytes: int) -> Fetched:
        """Stream one instance, as stored by the source, to `path`."""
        url = self.instance_url(ref)
        # pixel data hardly compresses: spare both sides the gzip work
        headers = {"Accept": AS_STORED, "Accept-Encoding": "identity"}
        try:
            async with self.session.get(url, headers=headers) as answer:
                _check_status(answer, url)
                kind = answer.headers.get("Content-Type", "")
                if not kind.lower().startswith("multipart/related"):
                    raise SourceError(f"{url} answered {kind or 'no content type'}, not multipart")
                reader = aiohttp.MultipartReader.from_response(answer)
                part = await reader.next()
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise SourceError(f"{url} answered a multipart body without a DICOM part")
                return await _spool(part, path, max_bytes, url)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise SourceRetry(f"{url}: {type(exc).__name__}: {exc}"[:300]) from exc


async def _spool(part: aiohttp.BodyPartReader, path: Path, max_bytes: int, url: str) -> Fetched:
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as fp:
        while chunk := await part.read_chunk(READ_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise SourceError(f"{url}: instance over the {max_bytes}-byte upload limit")
            digest.update(chunk)
            await asyncio.to_thread(fp.write, chunk)
    if size == 0:
        raise SourceRetry(f"{url}: empty DICOM part")
    return Fetched(digest.hexdigest(), size)


def _check_status(answer: aiohttp.ClientResponse, url: str) -> None:
    status = answer.status
    if status in (200, 204, 206):
        return
    if status in (401, 403):
        raise SourceError(
            f"{url} refused access ({status}): give credentials with "
            "--header 'Authorization: Basic ...' (or Bearer ...)"
        )
    if status == 404:
        raise SourceError(
            f"{url} answered 404: is the URL the DICOMweb service root? "
            "(Orthanc: http://host:8042/dicom-web; dcm4chee: .../dcm4chee-arc/aets/DCM4CHEE/rs)"
        )
    if status == 429 or status >= 500:
        raise SourceRetry(f"{url} answered {status}")
    raise SourceError(
        f"{url} answered {status} {answer.reason or ''}: is this the DICOMweb service root?"
    )
