"""WADO-RS against a real FerretDB over real HTTP: instances, metadata, bulk data, frames.

Every DICOM file pydicom ships is stored and read back (byte-exact, in the default transfer
syntax, as metadata, bulk data and frames) and compared with what pydicom itself reads.
pydicom ships several encodings of the same SOP Instance UID, so the corpus is spread over
as many archives as it takes for each file to be stored once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import Message
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from aiohttp import ClientPayloadError, ClientTimeout, web
from aiohttp.test_utils import TestClient, TestServer
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, RLELossless

from cloudpacs.config import Settings
from cloudpacs.http.app import create_app
from cloudpacs.ingest import IngestResult, Outcome, Source
from cloudpacs.metrics import Metrics
from cloudpacs.runtime import Runtime, build_runtime
from cloudpacs.storage.database import open_database
from cloudpacs.storage.schema import init_schema
from tests.conftest import FerretServer
from tests.factory import Spec, make_dataset, pydicom_test_files, write_instance, write_study

Client = TestClient[web.Request, web.Application]
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
OCTETS_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PIXEL_DATA = 0x7FE00010
# What pydicom raises when it cannot decode a test file's pixel data.
DECODE_ERRORS = (RuntimeError, ValueError, NotImplementedError, TypeError, AttributeError)
CORPUS_ARCHIVE_SIZE = 20
CORPUS_CONCURRENCY = 8
WORD_BYTES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


# ---- multipart/related and archive helpers (also used by the STOW-RS and client tests) ----
@dataclass(frozen=True)
class BodyPart:
    headers: dict[str, str]  # names in lower case
    body: bytes


def split_multipart(content_type: str, body: bytes) -> list[BodyPart]:
    """The parts of a multipart/related body, checking its framing (RFC 2046) on the way."""
    header = Message()
    header["Content-Type"] = content_type
    assert header.get_content_type() == "multipart/related", content_type
    boundary = header.get_param("boundary")
    assert isinstance(boundary, str) and boundary, content_type
    delimiter = b"--" + boundary.encode()
    assert body.startswith(delimiter), body[:80]
    pieces = body[len(delimiter) :].split(b"\r\n" + delimiter)
    assert pieces[-1] in (b"--", b"--\r\n"), f"no close delimiter: {pieces[-1][:80]!r}"
    parts = []
    for piece in pieces[:-1]:
        assert piece.startswith(b"\r\n"), piece[:80]
        head, separator, payload = piece[2:].partition(b"\r\n\r\n")
        assert separator, f"part without a header/body separator: {piece[:80]!r}"
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append(BodyPart(headers, payload))
    return parts


async def get_parts(
    client: Client, url: str, accept: str | None = None
) -> tuple[str, list[BodyPart]]:
    """GET a multipart answer (with no Accept header at all when `accept` is None)."""
    kwargs: dict[str, Any] = (
        {"headers": {"Accept": accept}} if accept else {"skip_auto_headers": {"Accept"}}
    )
    response = await client.get(url, **kwargs)
    body = await response.read()
    assert response.status == 200, (url, response.status, body[:300])
    content_type = response.headers["Content-Type"]
    return content_type, split_multipart(content_type, body)


def instance_url(result: IngestResult) -> str:
    return (
        f"/dicomweb/studies/{result.study_uid}/series/{result.series_uid}"
        f"/instances/{result.sop_uid}"
    )


async def stored(runtime: Runtime, path: Path) -> IngestResult:
    result = await runtime.ingestor.ingest(path, Source("test"))
    assert result.outcome is Outcome.STORED, result.reason
    return result


def archive_settings(ferretdb: FerretServer, home: Path, **changes: Any) -> Settings:
    settings = Settings(
        home=home,
        mongo_uri=ferretdb.uri,
        database=f"t_{uuid.uuid4().hex[:12]}",
        orphan_grace_seconds=0,
    )
    return dataclasses.replace(settings, **changes)


@contextlib.asynccontextmanager
async def archive(
    settings: Settings,
) -> AsyncIterator[tuple[Runtime, Client]]:
    """A fresh archive (own database) served over HTTP; dropped on exit."""
    assert settings.mongo_uri is not None
    database = open_database(settings.mongo_uri, settings.database)
    runtime: Runtime | None = None
    try:
        runtime = build_runtime(settings, database, Metrics(), await init_schema(database))
        server = TestServer(create_app(runtime.services()), host="127.0.0.1")
        # a hung answer fails its test quickly instead of waiting for aiohttp's 5 minutes
        async with TestClient(server, timeout=ClientTimeout(total=30)) as client:
            yield runtime, client
    finally:
        if runtime is not None:
            await runtime.parser.close()
        await database.client.drop_database(settings.database)
        await database.close()


def pydicom_file(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


# ---- reference values computed by pydicom from the original files ------------------------
def swap_to_little_endian(value: bytes, vr: str, bits_allocated: int, is_pixel_data: bool) -> bytes:
    """PS3.5 7.3: big endian OW/OL/OF/OD/OV values are swapped per word (pixel data of more
    than 16 bits per sample, per sample: that is how pydicom reads them)."""
    size = WORD_BYTES.get(vr, 1)
    if is_pixel_data and vr == "OW" and bits_allocated > 16:
        size = bits_allocated // 8
    if size == 1:
        return value
    whole = len(value) - len(value) % size
    words = np.frombuffer(value, dtype=f">u{size}", count=whole // size)
    return words.astype(f"<u{size}").tobytes() + value[whole:]


def element_at(ds: Dataset, path: str) -> tuple[Dataset, Any]:
    """The dataset holding the element at a bulk data path, and the element."""
    parts = path.split("/")
    for tag, index in zip(parts[:-1:2], parts[1::2], strict=True):
        ds = ds[int(tag, 16)].value[int(index)]
    return ds, ds[int(parts[-1], 16)]


def bulk_value(ds: Dataset, path: str) -> bytes:
    """The little endian value of a bulk element, as the web must send it."""
    holder, elem = element_at(ds, path)
    value = bytes(elem.value)
    if ds.file_meta.TransferSyntaxUID == EXPLICIT_BE:
        bits = int(holder.get("BitsAllocated", 0) or 0)
        value = swap_to_little_endian(value, elem.VR, bits, elem.tag == PIXEL_DATA)
    return value


def decoded_pixels(ds: Dataset) -> np.ndarray[Any, Any] | None:
    try:
        array: np.ndarray[Any, Any] = ds.pixel_array
    except DECODE_ERRORS:
        return None
    return array


def can_decompress(path: Path) -> bool:
    """Whether pydicom can turn the file into Explicit VR Little Endian."""
    ds = pydicom.dcmread(path)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return True
    try:
        ds.decompress(generate_instance_uid=False)
    except DECODE_ERRORS:
        return False
    return True


# Attributes that decompression legitimately changes (pydicom converts YBR to RGB).
CHANGED_BY_DECOMPRESSION = {PIXEL_DATA, 0x00280004, 0x00280006, 0x00282110, 0x00282114}


def assert_same_attributes(out: Dataset, original: Dataset) -> None:
    """Every attribute of the original has the same value in `out` (group lengths, pixel
    data and, for compressed originals, what decompression changes, excepted)."""
    compressed = original.file_meta.TransferSyntaxUID.is_compressed
    big_endian = original.file_meta.TransferSyntaxUID == EXPLICIT_BE
    for elem in original:
        tag = elem.tag
        if tag.element == 0 or tag == PIXEL_DATA:
            continue
        if compressed and tag in CHANGED_BY_DECOMPRESSION:
            continue
        assert tag in out, f"{tag} is missing"
        if big_endian and elem.VR in WORD_BYTES:
            expected = swap_to_little_endian(bytes(elem.value), elem.VR, 0, False)
            assert bytes(out[tag].value) == expected, tag
            continue
        assert out[tag].value == elem.value, (tag, elem.value, out[tag].value)


def assert_same_pixels(out: Dataset, original: Dataset) -> None:
    expected = decoded_pixels(original)
    if expected is None:  # pydicom cannot decode the original either: nothing to compare
        return
    actual = out.pixel_array
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected)


# ---- the corpus: every pydicom test file that ingests ------------------------------------
@dataclass(frozen=True)
class Stored:
    path: Path
    result: IngestResult
    client: Client

    @property
    def url(self) -> str:
        return instance_url(self.result)

    @property
    def name(self) -> str:
        return self.path.name

    def dataset(self) -> Dataset:
        return pydicom.dcmread(self.path)


@pytest.fixture(scope="module")
async def corpus(
    ferretdb: FerretServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[Stored]]:
    """Every pydicom file that ingests, stored where no other encoding of its SOP Instance UID
    is: a file refused as a conflict goes to the next round of archives. The archives are
    small (FerretDB answers any query but one by _id with a scan) and filled concurrently."""
    home = tmp_path_factory.mktemp("corpus")
    out: list[Stored] = []
    async with contextlib.AsyncExitStack() as stack:
        pending = pydicom_test_files()
        while pending:
            chunks = [
                pending[start : start + CORPUS_ARCHIVE_SIZE]
                for start in range(0, len(pending), CORPUS_ARCHIVE_SIZE)
            ]
            archives = [
                await stack.enter_async_context(archive(archive_settings(ferretdb, home)))
                for _ in chunks
            ]
            rounds = await asyncio.gather(
                *(
                    _fill(runtime, client, chunk)
                    for (runtime, client), chunk in zip(archives, chunks, strict=True)
                )
            )
            conflicts = [path for stored_files, refused in rounds for path in refused]
            out += [item for stored_files, _ in rounds for item in stored_files]
            assert len(conflicts) < len(pending), "no progress"
            pending = conflicts
        yield out


async def _fill(
    runtime: Runtime,
    client: Client,
    paths: list[Path],
) -> tuple[list[Stored], list[Path]]:
    """Ingest `paths` in order: what was stored, and what conflicted with a stored file."""
    stored_files, conflicts = [], []
    for path in paths:
        result = await runtime.ingestor.ingest(path, Source("test"))
        if result.reason_code == "conflict":
            conflicts.append(path)
        elif result.outcome is Outcome.STORED:
            stored_files.append(Stored(path, result, client))
    return stored_files, conflicts


async def test_corpus_covers_every_kind_of_encoding(corpus: list[Stored]) -> None:
    syntaxes = {item.dataset().file_meta.TransferSyntaxUID for item in corpus}
    assert len(corpus) >= 100
    for uid in (
        EXPLICIT_LE,
        IMPLICIT_LE,
        EXPLICIT_BE,
        DEFLATED,
        JPEG_BASELINE,
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        RLELossless,
    ):
        assert uid in syntaxes, uid


async def for_each(
    corpus: list[Stored], check: Callable[[Stored], Awaitable[list[Any]]]
) -> list[tuple[str, list[Any]]]:
    """Run `check` on every stored file, a few at a time; the files with problems."""
    semaphore = asyncio.Semaphore(CORPUS_CONCURRENCY)

    async def one(item: Stored) -> tuple[str, list[Any]]:
        async with semaphore:
            return item.name, await check(item)

    results = await asyncio.gather(*(one(item) for item in corpus))
    return [(name, problems) for name, problems in results if problems]


async def test_every_stored_file_comes_back_byte_exact(corpus: list[Stored]) -> None:
    async def check(item: Stored) -> list[Any]:
        content_type, parts = await get_parts(item.client, item.url, ANY_DICOM)
        ts = item.dataset().file_meta.TransferSyntaxUID
        headers = parts[0].headers
        problems = [
            content_type.startswith('multipart/related; type="application/dicom"') or "type",
            len(parts) == 1 or f"{len(parts)} parts",
            parts[0].body == item.path.read_bytes() or "bytes differ",
            headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
            or headers["content-type"],
            headers["content-location"] == str(item.client.make_url(item.url))
            or headers["content-location"],
        ]
        return [p for p in problems if p is not True]

    assert await for_each(corpus, check) == []


async def test_every_stored_file_in_the_default_transfer_syntax(corpus: list[Stored]) -> None:
    """No Accept header: Explicit VR Little Endian with every attribute (the SOP Instance UID
    included) and the decoded pixels of the original; 406 only when pydicom cannot decode
    the original either."""

    async def check(item: Stored) -> list[Any]:
        original = item.dataset()
        response = await item.client.get(item.url, skip_auto_headers={"Accept"})
        body = await response.read()
        if not can_decompress(item.path):
            return [] if response.status == 406 else [f"undecodable, yet {response.status}"]
        if response.status != 200:
            return [response.status, body[:200]]
        (part,) = split_multipart(response.headers["Content-Type"], body)
        if part.headers["content-type"] != f"application/dicom; transfer-syntax={EXPLICIT_LE}":
            return [part.headers["content-type"]]
        if original.file_meta.TransferSyntaxUID == EXPLICIT_LE:
            return [] if part.body == item.path.read_bytes() else ["not sent as stored"]
        try:
            out = pydicom.dcmread(BytesIO(part.body))
            assert out.file_meta.TransferSyntaxUID == EXPLICIT_LE
            assert_same_attributes(out, original)
            assert_same_pixels(out, original)
        except AssertionError as exc:
            return [str(exc)[:300]]
        return []

    assert await for_each(corpus, check) == []


def _normalise(element: dict[str, Any]) -> dict[str, Any]:
    """An empty Value array and no Value at all both mean 'present, empty' (PS3.18 F.2.5)."""
    if element.get("Value") == []:
        return {k: v for k, v in element.items() if k != "Value"}
    return element


BINARY = {"BulkDataURI", "InlineBinary"}


def compare_json(
    ours: dict[str, Any], reference: dict[str, Any], ds: Dataset, prefix: str, bulk: dict[str, str]
) -> list[str]:
    """Differences between our DICOM JSON of `ds` and pydicom's; BulkDataURIs collected in
    `bulk`. Which binary values are inline is a threshold policy: where ours and pydicom's
    differ, our inline value must be the element's value."""
    problems = []
    if set(ours) != set(reference):
        problems.append(f"{prefix}: tags differ {sorted(set(ours) ^ set(reference))}")
    for tag in sorted(set(ours) & set(reference)):
        mine, theirs = _normalise(ours[tag]), _normalise(reference[tag])
        path = f"{prefix}{tag}"
        if BINARY & (set(mine) | set(theirs)):
            if mine["vr"] != theirs["vr"] or not (BINARY & set(mine) and BINARY & set(theirs)):
                problems.append(f"{path}: {str(mine)[:100]} for {str(theirs)[:100]}")
            elif "BulkDataURI" in mine:
                bulk[path] = mine["BulkDataURI"]
            elif "InlineBinary" not in theirs:
                value = bytes(ds[int(tag, 16)].value)
                if base64.b64decode(mine["InlineBinary"]) != value:
                    problems.append(f"{path}: InlineBinary is not the value")
            elif mine != theirs:
                problems.append(f"{path}: InlineBinary differs")
        elif mine.get("vr") == "SQ" and theirs.get("vr") == "SQ":
            items, expected = mine.get("Value", []), theirs.get("Value", [])
            if len(items) != len(expected):
                problems.append(f"{path}: {len(items)} items, not {len(expected)}")
            children = ds[int(tag, 16)].value
            for index, (a, b) in enumerate(zip(items, expected, strict=False)):
                problems += compare_json(a, b, children[index], f"{path}/{index}/", bulk)
        elif mine != theirs:
            problems.append(f"{path}: {str(mine)[:100]} != {str(theirs)[:100]}")
    return problems


def reference_json(ds: Dataset) -> dict[str, Any]:
    as_json: dict[str, Any] = ds.to_json_dict(
        bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk"
    )
    return {tag: value for tag, value in as_json.items() if not tag.startswith("0002")}


async def test_every_stored_file_metadata_and_bulk_data(corpus: list[Stored]) -> None:
    """Metadata equals pydicom's DICOM JSON; every BulkDataURI is absolute and answers the
    element's value (little endian; encapsulated pixel data as its items)."""

    async def check(item: Stored) -> list[Any]:
        response = await item.client.get(item.url + "/metadata")
        if response.status != 200:
            return [response.status]
        assert response.headers["Content-Type"].startswith("application/dicom+json")
        body = await response.json()
        assert len(body) == 1
        ds = item.dataset()
        bulk: dict[str, str] = {}
        problems = compare_json(body[0], reference_json(ds), ds, "", bulk)
        if "7FE00010" in body[0] and "7FE00010" not in bulk:
            problems.append("pixel data without a BulkDataURI")
        base = f"{item.client.make_url(item.url)}/bulkdata/"
        for path, uri in bulk.items():
            if uri != base + path:
                problems.append(f"{path}: BulkDataURI {uri}, not under {base}")
                continue
            relative = uri[len(str(item.client.make_url(""))) :]
            _, parts = await get_parts(item.client, relative, OCTETS)
            if len(parts) != 1 or parts[0].body != bulk_value(ds, path):
                problems.append(f"{path}: bulk data differs from the element value")
        return problems[:5]

    assert await for_each(corpus, check) == []


def frame_list(count: int) -> str:
    return ",".join(str(n) for n in range(1, count + 1))


async def test_every_stored_file_frames(corpus: list[Stored]) -> None:
    """All frames of every instance with pixel data: native ones are the value cut in equal
    frames; encapsulated ones decode to pydicom's pixel_array, or come as stored."""
    with_pixels = [item for item in corpus if "PixelData" in item.dataset()]
    assert len(with_pixels) >= 80

    async def check(item: Stored) -> list[Any]:
        ds = item.dataset()
        count = int(ds.get("NumberOfFrames", 1) or 1)
        url = f"{item.url}/frames/{frame_list(count)}"
        response = await item.client.get(url, headers={"Accept": OCTETS})
        body = await response.read()
        frames, problems = None, []
        if response.status == 200:
            parts = split_multipart(response.headers["Content-Type"], body)
            frames = [p.body for p in parts]
            if not all(p.headers["content-type"] == "application/octet-stream" for p in parts):
                problems.append("decoded frames not application/octet-stream")
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            problems += _check_decoded_frames(ds, count, response.status, frames)
            problems += await _check_stored_frames(item, ds, count)
        else:
            problems += _check_native_frames(ds, count, response.status, frames)
        return problems

    assert await for_each(with_pixels, check) == []


def _check_native_frames(
    ds: Dataset, count: int, status: int, frames: list[bytes] | None
) -> list[str]:
    if status == 404 and ds.BitsAllocated == 1 and count > 1:
        return []  # bit-packed frames not on byte boundaries cannot be cut out
    if frames is None:
        return [f"status {status}"]
    value = bulk_value(ds, "7FE00010")
    joined = b"".join(frames)
    problems = []
    if len(frames) != count or len({len(f) for f in frames}) != 1:
        problems.append(f"{len(frames)} frames of sizes {sorted({len(f) for f in frames})}")
    # what follows the last frame (odd-length or padded values) is less than a frame
    if joined != value[: len(joined)] or len(value) - len(joined) >= len(frames[0]):
        problems.append("frames are not the pixel data value cut in equal pieces")
    simple = ds.BitsAllocated >= 8 and ds.get("PlanarConfiguration", 0) == 0
    pixels = decoded_pixels(ds) if simple and "YBR" not in ds.PhotometricInterpretation else None
    if pixels is not None and not problems:
        pixels = pixels.reshape(count, -1)
        for index, frame in enumerate(frames):
            if frame != pixels[index].astype(pixels.dtype.newbyteorder("<")).tobytes():
                problems.append(f"frame {index + 1} differs from pixel_array")
    return problems


def _check_decoded_frames(
    ds: Dataset, count: int, status: int, frames: list[bytes] | None
) -> list[str]:
    pixels = decoded_pixels(ds)
    if pixels is None:
        return [] if status == 406 else [f"undecodable, yet status {status}"]
    if frames is None:
        return [f"status {status}"]
    if len(frames) != count:
        return [f"{len(frames)} decoded frames, not {count}"]
    pixels = pixels.reshape(count, -1)
    return [
        f"decoded frame {index + 1} differs from pixel_array"
        for index, frame in enumerate(frames)
        if frame != pixels[index].tobytes()
    ]


async def _check_stored_frames(item: Stored, ds: Dataset, count: int) -> list[str]:
    url = f"{item.url}/frames/{frame_list(count)}"
    _, parts = await get_parts(item.client, url, OCTETS_AS_STORED)
    problems = []
    if [p.body for p in parts] != list(generate_frames(ds.PixelData, number_of_frames=count)):
        problems.append("stored frames differ from pydicom's generate_frames")
    ts = ds.file_meta.TransferSyntaxUID
    if not all(p.headers["content-type"].endswith(f"transfer-syntax={ts}") for p in parts):
        problems.append(f"stored frames labelled {parts[0].headers['content-type']}")
    return problems


# ---- study and series retrieval ------------------------------------------------------------
async def test_study_and_series_retrieval_return_every_instance_once(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
) -> None:
    written = write_study(tmp_path / "study", n_series=2, per_series=3)
    other = write_instance(tmp_path / "other.dcm")  # another study: never part of the answer
    await stored(runtime, tmp_path / "other.dcm")
    results = {spec.sop_uid: await stored(runtime, path) for path, spec in written}
    by_sop = {spec.sop_uid: path.read_bytes() for path, spec in written}
    study_uid = written[0][1].study_uid
    for accept in (ANY_DICOM, None):  # explicit LE instances: as stored either way
        content_type, parts = await get_parts(client, f"/dicomweb/studies/{study_uid}", accept)
        assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
        sops = [pydicom.dcmread(BytesIO(p.body)).SOPInstanceUID for p in parts]
        assert sorted(sops) == sorted(by_sop) and other.sop_uid not in sops
        for part, sop in zip(parts, sops, strict=True):
            assert part.body == by_sop[sop]
            url = instance_url(results[sop])
            assert part.headers["content-location"] == str(client.make_url(url))
            assert (
                part.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
            )
    # retrieval order: series by number, instances by number
    assert [s.split("/")[-1] for s in [p.headers["content-location"] for p in parts]] == [
        spec.sop_uid for _, spec in written
    ]
    series_uid = written[3][1].series_uid
    _, parts = await get_parts(
        client, f"/dicomweb/studies/{study_uid}/series/{series_uid}", ANY_DICOM
    )
    expected = {spec.sop_uid for _, spec in written if spec.series_uid == series_uid}
    assert len(parts) == 3
    assert {pydicom.dcmread(BytesIO(p.body)).SOPInstanceUID for p in parts} == expected


# ---- the default transfer syntax -----------------------------------------------------------
DEFAULT_ACCEPTS = [
    None,  # no Accept header at all
    "*/*",
    DICOM,  # no transfer-syntax parameter
    f"{DICOM}; transfer-syntax={EXPLICIT_LE}",
    f"application/json;q=0.9, {DICOM};q=0.5",
]


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "ExplVR_BigEnd.dcm",  # 8-bit, planar configuration 1
        "SC_rgb_small_odd_big_endian.dcm",  # 8-bit pixels in a big endian OW value
        "rtdose_expb.dcm",  # 32-bit, 15 frames
        "image_dfl.dcm",  # deflated
    ],
)
async def test_default_transfer_syntax_is_explicit_vr_little_endian(
    runtime: Runtime,
    client: Client,
    name: str,
) -> None:
    original = pydicom.dcmread(pydicom_file(name))
    assert original.file_meta.TransferSyntaxUID != EXPLICIT_LE
    url = instance_url(await stored(runtime, pydicom_file(name)))
    answers = []
    for accept in DEFAULT_ACCEPTS:
        _, parts = await get_parts(client, url, accept)
        assert len(parts) == 1
        assert (
            parts[0].headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        )
        answers.append(parts[0].body)
    assert all(answer == answers[0] for answer in answers)
    out = pydicom.dcmread(BytesIO(answers[0]))
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert out.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert_same_attributes(out, original)
    assert np.array_equal(out.pixel_array, original.pixel_array)
    if not original.file_meta.TransferSyntaxUID.is_compressed:  # native: the same bytes
        assert out.PixelData[: len(original.PixelData)] == bulk_value(original, "7FE00010")


# ---- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "status"),
    [
        (f"{DICOM}; transfer-syntax={IMPLICIT_LE}", 406),  # never sent over the web
        (f"{DICOM}; transfer-syntax={EXPLICIT_BE}", 406),
        (f"{DICOM}; transfer-syntax={JPEG_BASELINE}", 406),  # would need an encoder
        (f"{DICOM}; transfer-syntax=1.2.3.4", 406),
        ("application/json", 406),
        ("application/dicom+json", 406),
        ('multipart/related; type="application/octet-stream"', 406),
        ("image/jpeg", 406),
        (f"{DICOM}; transfer-syntax=*; q=0", 406),
        (f"{DICOM}; transfer-syntax={EXPLICIT_LE}", 200),
    ],
)
async def test_transfer_syntaxes_and_media_types_that_are_refused(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
    accept: str,
    status: int,
) -> None:
    write_instance(tmp_path / "a.dcm")
    url = instance_url(await stored(runtime, tmp_path / "a.dcm"))
    for level in (url, url.rsplit("/instances/", 1)[0], url.rsplit("/series/", 1)[0]):
        response = await client.get(level, headers={"Accept": accept})
        await response.read()
        assert response.status == status, (level, accept)


async def test_stored_compressed_instance_is_sent_as_stored_only_on_request(
    runtime: Runtime,
    client: Client,
) -> None:
    path = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")
    url = instance_url(await stored(runtime, path))
    _, parts = await get_parts(client, url, f"{DICOM}; transfer-syntax={JPEG_BASELINE}")
    assert parts[0].body == path.read_bytes()
    assert parts[0].headers["content-type"] == f"application/dicom; transfer-syntax={JPEG_BASELINE}"
    response = await client.get(
        url, headers={"Accept": f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.90"}
    )
    assert response.status == 406  # JPEG -> JPEG 2000 would need an encoder


async def test_unknown_study_series_instance_frames_and_bulk_data_are_404(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
) -> None:
    spec = write_instance(tmp_path / "a.dcm")
    await stored(runtime, tmp_path / "a.dcm")
    study, series, sop = spec.study_uid, spec.series_uid, spec.sop_uid
    urls = [
        "/dicomweb/studies/1.2.3",
        f"/dicomweb/studies/{study}/series/1.2.3",
        f"/dicomweb/studies/{study}/series/{series}/instances/1.2.3",
        f"/dicomweb/studies/1.2.3/series/{series}/instances/{sop}",  # wrong study
        f"/dicomweb/studies/{study}/series/1.2.3/instances/{sop}",  # wrong series
    ]
    for url in urls:
        for suffix, accept in (("", ANY_DICOM), ("/metadata", "application/dicom+json")):
            response = await client.get(url + suffix, headers={"Accept": accept})
            assert response.status == 404, url + suffix
            assert "error" in await response.json()
    for url in urls[2:]:
        for suffix in ("/frames/1", "/bulkdata/7FE00010"):
            response = await client.get(url + suffix, headers={"Accept": OCTETS})
            assert response.status == 404, url + suffix
    good = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    response = await client.get(good + "/bulkdata/00100010", headers={"Accept": OCTETS})
    assert response.status == 404  # no bulk data there


# ---- metadata ----------------------------------------------------------------------------------
async def test_metadata_at_study_series_and_instance_level(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
) -> None:
    written = write_study(tmp_path / "study", n_series=2, per_series=2)
    results = {spec.sop_uid: await stored(runtime, path) for path, spec in written}
    datasets = {spec.sop_uid: pydicom.dcmread(path) for path, spec in written}
    study_uid, series_uid = written[0][1].study_uid, written[0][1].series_uid
    levels = {
        f"/dicomweb/studies/{study_uid}/metadata": set(datasets),
        f"/dicomweb/studies/{study_uid}/series/{series_uid}/metadata": {
            spec.sop_uid for _, spec in written if spec.series_uid == series_uid
        },
        instance_url(results[written[3][1].sop_uid]) + "/metadata": {written[3][1].sop_uid},
    }
    for url, expected in levels.items():
        for accept in ("application/dicom+json", "application/json", None):
            response = await client.get(url, headers={"Accept": accept} if accept else {})
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("application/dicom+json")
            items = await response.json()
            assert len(items) == len(expected)
            assert {item["00080018"]["Value"][0] for item in items} == expected
        for item in items:
            sop = item["00080018"]["Value"][0]
            ds = datasets[sop]
            reference = reference_json(ds)
            bulk: dict[str, str] = {}
            assert compare_json(item, reference, ds, "", bulk) == []
            uri = item["7FE00010"]["BulkDataURI"]
            assert uri == f"{client.make_url(instance_url(results[sop]))}/bulkdata/7FE00010"
            assert uri.startswith("http://")
            _, parts = await get_parts(client, uri[len(str(client.make_url(""))) :], OCTETS)
            assert [p.body for p in parts] == [ds.PixelData]
            assert parts[0].headers["content-type"] == "application/octet-stream"
    response = await client.get(
        instance_url(results[written[0][1].sop_uid]) + "/metadata", headers={"Accept": ANY_DICOM}
    )
    assert response.status == 406


async def test_bulk_data_inside_a_sequence(
    runtime: Runtime,
    client: Client,
) -> None:
    """The icon's pixel data lies inside a sequence: its BulkDataURI answers its own bytes."""
    path = pydicom_file("examples_overlay.dcm")
    url = instance_url(await stored(runtime, path))
    ds = pydicom.dcmread(path)
    response = await client.get(url + "/metadata")
    (meta,) = await response.json()
    icon = meta["00880200"]["Value"][0]["7FE00010"]
    assert icon["BulkDataURI"].endswith("/bulkdata/00880200/0/7FE00010")
    for relative, expected in (
        ("00880200/0/7FE00010", ds.IconImageSequence[0].PixelData),
        ("60003000", ds[0x60003000].value),
        ("7FE00010", ds.PixelData),
    ):
        _, parts = await get_parts(client, f"{url}/bulkdata/{relative}", OCTETS)
        assert parts[0].body == expected, relative


# ---- frames ------------------------------------------------------------------------------------
async def test_frames_of_a_native_multiframe_instance(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
) -> None:
    write_instance(tmp_path / "mf.dcm", Spec(frames=5, rows=8, columns=12))
    url = instance_url(await stored(runtime, tmp_path / "mf.dcm"))
    pixels = pydicom.dcmread(tmp_path / "mf.dcm").pixel_array
    assert pixels.shape == (5, 8, 12)
    for frames, accept in (
        ([1], OCTETS),
        ([1, 3], OCTETS),
        ([5, 2, 4], OCTETS),  # in the order asked
        ([2, 2], OCTETS),
        ([3], OCTETS_AS_STORED),  # native frames: the same bytes either way
        ([1, 5], None),
    ):
        numbers = ",".join(str(n) for n in frames)
        content_type, parts = await get_parts(client, f"{url}/frames/{numbers}", accept)
        assert content_type.startswith('multipart/related; type="application/octet-stream"')
        assert [p.body for p in parts] == [pixels[n - 1].astype("<u2").tobytes() for n in frames]
        assert all(p.headers["content-type"] == "application/octet-stream" for p in parts)


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("rtdose_rle.dcm", 15),  # RLE, 32-bit
        ("examples_ybr_color.dcm", 30),  # JPEG baseline, YBR_FULL_422
        ("SC_rgb_rle_2frame.dcm", 2),
    ],
)
async def test_frames_of_an_encapsulated_multiframe_instance(
    runtime: Runtime,
    client: Client,
    name: str,
    count: int,
) -> None:
    path = pydicom_file(name)
    url = instance_url(await stored(runtime, path))
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    stored_frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    assert len(pixels) == len(stored_frames) == count
    for frames in ([1], [count], [2, 1], list(range(1, count + 1))):
        numbers = ",".join(str(n) for n in frames)
        _, parts = await get_parts(client, f"{url}/frames/{numbers}", OCTETS)
        assert [p.body for p in parts] == [pixels[n - 1].tobytes() for n in frames]
        content_type, parts = await get_parts(client, f"{url}/frames/{numbers}", OCTETS_AS_STORED)
        assert [p.body for p in parts] == [stored_frames[n - 1] for n in frames]
        ts = ds.file_meta.TransferSyntaxUID
        assert all(p.headers["content-type"].endswith(f"; transfer-syntax={ts}") for p in parts)
        assert content_type.startswith(
            f'multipart/related; type="{parts[0].headers["content-type"].split(";")[0]}"'
        )


@pytest.mark.parametrize(
    "name", ["MR_small_bigendian.dcm", "rtdose_expb.dcm", "SC_rgb_small_odd_big_endian.dcm"]
)
async def test_frames_of_big_endian_instances_are_little_endian(
    runtime: Runtime,
    client: Client,
    name: str,
) -> None:
    path = pydicom_file(name)
    url = instance_url(await stored(runtime, path))
    ds = pydicom.dcmread(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = ds.pixel_array.reshape(count, -1)
    for frames in ([1], list(range(count, 0, -1))):
        numbers = ",".join(str(n) for n in frames)
        _, parts = await get_parts(client, f"{url}/frames/{numbers}", OCTETS)
        expected = [pixels[n - 1].astype(pixels.dtype.newbyteorder("<")).tobytes() for n in frames]
        assert [p.body for p in parts] == expected


async def test_frame_of_a_deflated_instance(
    runtime: Runtime,
    client: Client,
) -> None:
    path = pydicom_file("image_dfl.dcm")
    url = instance_url(await stored(runtime, path))
    ds = pydicom.dcmread(path)
    _, parts = await get_parts(client, f"{url}/frames/1", OCTETS)
    assert [p.body for p in parts] == [ds.PixelData]
    _, parts = await get_parts(client, f"{url}/bulkdata/7FE00010", OCTETS)
    assert [p.body for p in parts] == [ds.PixelData]
    response = await client.get(f"{url}/frames/2", headers={"Accept": OCTETS})
    assert response.status == 400


async def test_frame_errors(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
) -> None:
    write_instance(tmp_path / "mf.dcm", Spec(frames=3))
    url = instance_url(await stored(runtime, tmp_path / "mf.dcm"))
    for frames, status in (
        ("4", 400),
        ("0", 400),
        ("1,4", 400),
        ("-1", 400),
        ("a", 400),
        (",", 400),
    ):
        response = await client.get(f"{url}/frames/{frames}", headers={"Accept": OCTETS})
        assert response.status == status, frames
        assert "error" in await response.json()
    response = await client.get(f"{url}/frames/1", headers={"Accept": "application/json"})
    assert response.status == 406
    no_pixels = make_dataset(Spec())
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "np.dcm", enforce_file_format=True)
    url = instance_url(await stored(runtime, tmp_path / "np.dcm"))
    for suffix in ("/frames/1", "/bulkdata/7FE00010"):
        response = await client.get(url + suffix, headers={"Accept": OCTETS})
        assert response.status == 404, suffix


# ---- failures while converting -------------------------------------------------------------
def write_undecodable(path: Path, spec: Spec) -> None:
    """An RLE instance whose only fragment is garbage: it ingests, but no decoder copes."""
    ds = make_dataset(spec)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\xff" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DECODE_ERRORS):
        _ = pydicom.dcmread(path).pixel_array


async def test_an_instance_that_cannot_be_decoded(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
) -> None:
    """Alone: 406 before the answer starts. Second in a study: the answer started, so the
    connection is cut and the client sees an incomplete body (never a hang, never a body that
    looks complete)."""
    good = write_instance(tmp_path / "good.dcm", instance_number=1)
    write_undecodable(
        tmp_path / "bad.dcm",
        Spec(study_uid=good.study_uid, series_uid=good.series_uid, instance_number=2),
    )
    await stored(runtime, tmp_path / "good.dcm")
    bad_url = instance_url(await stored(runtime, tmp_path / "bad.dcm"))
    response = await client.get(bad_url, skip_auto_headers={"Accept"})
    assert response.status == 406
    assert "transfer-syntax=*" in (await response.json())["error"]
    _, parts = await get_parts(client, bad_url, ANY_DICOM)
    assert parts[0].body == (tmp_path / "bad.dcm").read_bytes()
    response = await client.get(f"{bad_url}/frames/1", headers={"Accept": OCTETS})
    assert response.status == 406
    _, parts = await get_parts(client, f"{bad_url}/frames/1", OCTETS_AS_STORED)
    assert parts[0].body == b"\xff" * 64
    response = await client.get(f"/dicomweb/studies/{good.study_uid}", skip_auto_headers={"Accept"})
    assert response.status == 200
    with pytest.raises(ClientPayloadError):
        await response.read()
    # the server is still there
    _, parts = await get_parts(client, f"/dicomweb/studies/{good.study_uid}", ANY_DICOM)
    assert len(parts) == 2


# ---- values larger than a GridFS chunk ---------------------------------------------------
@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
async def test_frames_and_bulk_data_across_gridfs_chunks(
    runtime: Runtime,
    client: Client,
    tmp_path: Path,
    big_endian: bool,
) -> None:
    """Frames of 150 KiB in a 450 KiB value: frames and the value span 255 KiB GridFS chunks."""
    ds = make_dataset(Spec(rows=256, columns=300, frames=3))
    pixels = ds.pixel_array
    if big_endian:
        ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_BE)
        ds.PixelData = pixels.astype(">u2").tobytes()
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    url = instance_url(await stored(runtime, tmp_path / "big.dcm"))
    little = [frame.astype("<u2").tobytes() for frame in pixels]
    _, parts = await get_parts(client, f"{url}/frames/3,1,2", OCTETS)
    assert [p.body for p in parts] == [little[2], little[0], little[1]]
    _, parts = await get_parts(client, f"{url}/bulkdata/7FE00010", OCTETS)
    assert [p.body for p in parts] == [b"".join(little)]
    _, parts = await get_parts(client, url, None)
    assert np.array_equal(pydicom.dcmread(BytesIO(parts[0].body)).pixel_array, pixels)
