"""STOW-RS against a real FerretDB over real HTTP: answers, failure reasons, and that a
refused part (or a refused request) leaves nothing behind in GridFS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest

from cloudpacs.runtime import Runtime
from tests.conftest import FerretServer
from tests.factory import Spec, make_dataset
from tests.http.test_wado import (
    ANY_DICOM,
    Client,
    archive,
    archive_settings,
    get_parts,
    pydicom_file,
)

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
RETRIEVE_URL = "00081190"
FAILURE_REASON = "00081197"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
CANNOT_UNDERSTAND = 0xC000  # 49152
WRONG_STUDY = 0xA900  # 43264
CONFLICT = 0x0111
BOUNDARY = "cloudpacs-test-boundary"


def dicom_bytes(spec: Spec | None = None, **changes: Any) -> tuple[Spec, bytes]:
    spec = spec or Spec()
    ds = make_dataset(spec)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return spec, out.getvalue()


def pydicom_bytes(name: str) -> bytes:
    return pydicom_file(name).read_bytes()


def multipart(parts: list[tuple[str | None, bytes]], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """A multipart/related body and its Content-Type; a None part type sends no header."""
    body = b""
    for content_type, payload in parts:
        head = f"--{boundary}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        body += (head + "\r\n").encode() + payload + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


async def post(
    client: Client,
    parts: list[tuple[str | None, bytes]],
    url: str = "/dicomweb/studies",
) -> tuple[int, dict[str, Any]]:
    body, content_type = multipart(parts)
    response = await client.post(url, data=body, headers={"Content-Type": content_type})
    answer = await response.json(content_type=None)
    if response.status in (200, 202, 409) and answer:
        assert response.headers["Content-Type"].startswith("application/dicom+json")
    return response.status, answer


def items(answer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list(answer.get(key, {}).get("Value", []))


def sop_of(item: dict[str, Any]) -> str | None:
    value = item[SOP_INSTANCE].get("Value")
    return str(value[0]) if value else None


def failure_of(item: dict[str, Any]) -> int:
    return int(item[FAILURE_REASON]["Value"][0])


async def assert_storage_consistent(runtime: Runtime, instances: int) -> None:
    """`instances` instances; every GridFS file (and chunk) belongs to one of them, and no
    upload is left half done."""
    db = runtime.database.db
    docs = await db["instances"].find({}, {"file_id": 1, "meta_file_id": 1}).to_list(None)
    assert len(docs) == instances
    referenced = {d["file_id"] for d in docs} | {
        d["meta_file_id"] for d in docs if d.get("meta_file_id")
    }
    files = {d["_id"] for d in await db["fs.files"].find({}, {"_id": 1}).to_list(None)}
    assert files == referenced
    assert set(await db["fs.chunks"].distinct("files_id")) == files
    assert await db["uploads"].count_documents({}) == 0
    tmp = runtime.settings.home / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir()), "temporary files left behind"


async def assert_retrievable(client: Client, url: str, data: bytes) -> None:
    assert url.startswith(str(client.make_url("/dicomweb/studies/")))
    _, parts = await get_parts(client, url[len(str(client.make_url(""))) :], ANY_DICOM)
    assert [p.body for p in parts] == [data]


async def test_store_several_instances(
    runtime: Runtime,
    client: Client,
) -> None:
    study = Spec().study_uid
    sent = [dicom_bytes(Spec(study_uid=study, instance_number=n)) for n in (1, 2, 3)]
    status, answer = await post(
        client,
        [
            ("application/dicom", sent[0][1]),
            ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", sent[1][1]),
            (None, sent[2][1]),  # a part without Content-Type is application/dicom
        ],
    )
    assert status == 200
    assert FAILED_SOP_SEQUENCE not in answer
    assert answer[RETRIEVE_URL]["Value"] == [str(client.make_url(f"/dicomweb/studies/{study}"))]
    referenced = items(answer, REFERENCED_SOP_SEQUENCE)
    assert [sop_of(item) for item in referenced] == [spec.sop_uid for spec, _ in sent]
    for item, (spec, data) in zip(referenced, sent, strict=True):
        assert item[SOP_CLASS]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
        (url,) = item[RETRIEVE_URL]["Value"]
        assert url == str(
            client.make_url(
                f"/dicomweb/studies/{study}/series/{spec.series_uid}/instances/{spec.sop_uid}"
            )
        )
        await assert_retrievable(client, url, data)
    response = await client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
    (found,) = await response.json()
    assert found["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    await assert_storage_consistent(runtime, 3)


async def test_store_into_a_named_study(
    runtime: Runtime,
    client: Client,
) -> None:
    spec, data = dicom_bytes()
    status, answer = await post(
        client, [("application/dicom", data)], f"/dicomweb/studies/{spec.study_uid}"
    )
    assert status == 200
    assert answer[RETRIEVE_URL]["Value"] == [
        str(client.make_url(f"/dicomweb/studies/{spec.study_uid}"))
    ]
    assert [sop_of(i) for i in items(answer, REFERENCED_SOP_SEQUENCE)] == [spec.sop_uid]


async def test_a_body_with_good_and_bad_parts(
    runtime: Runtime,
    client: Client,
) -> None:
    good, data = dicom_bytes()
    _, no_uid = dicom_bytes(SOPInstanceUID="")
    status, answer = await post(
        client,
        [
            ("application/dicom", b"this is not DICOM at all" * 10),
            ("application/dicom", data),
            ("text/plain", b"hello"),
            ("application/dicom", no_uid),
        ],
    )
    assert status == 202
    failed = items(answer, FAILED_SOP_SEQUENCE)
    assert [failure_of(item) for item in failed] == [CANNOT_UNDERSTAND] * 3
    assert all(item["00000902"]["Value"][0] for item in failed)  # a reason each
    referenced = items(answer, REFERENCED_SOP_SEQUENCE)
    assert [sop_of(item) for item in referenced] == [good.sop_uid]
    await assert_retrievable(client, referenced[0][RETRIEVE_URL]["Value"][0], data)
    await assert_storage_consistent(runtime, 1)


async def test_an_instance_of_another_study_fails_with_a900(
    runtime: Runtime,
    client: Client,
) -> None:
    mine, mine_data = dicom_bytes()
    other, other_data = dicom_bytes()
    url = f"/dicomweb/studies/{mine.study_uid}"
    status, answer = await post(
        client, [("application/dicom", other_data), ("application/dicom", mine_data)], url
    )
    assert status == 202
    (failed,) = items(answer, FAILED_SOP_SEQUENCE)
    assert failure_of(failed) == WRONG_STUDY
    assert sop_of(failed) == other.sop_uid
    assert [sop_of(i) for i in items(answer, REFERENCED_SOP_SEQUENCE)] == [mine.sop_uid]
    status, answer = await post(client, [("application/dicom", other_data)], url)
    assert status == 409  # every part failed
    assert REFERENCED_SOP_SEQUENCE not in answer
    assert [failure_of(i) for i in items(answer, FAILED_SOP_SEQUENCE)] == [WRONG_STUDY]
    response = await client.get(
        f"/dicomweb/studies/{other.study_uid}", headers={"Accept": ANY_DICOM}
    )
    assert response.status == 404
    await assert_storage_consistent(runtime, 1)


async def test_same_uid_different_bytes_is_a_conflict_and_same_bytes_a_success(
    runtime: Runtime,
    client: Client,
) -> None:
    spec, original = dicom_bytes()
    _, changed = dicom_bytes(spec, PatientName="Other^Name")
    assert original != changed
    status, answer = await post(client, [("application/dicom", original)])
    assert status == 200
    url = items(answer, REFERENCED_SOP_SEQUENCE)[0][RETRIEVE_URL]["Value"][0]
    status, answer = await post(client, [("application/dicom", changed)])
    assert status == 409
    (failed,) = items(answer, FAILED_SOP_SEQUENCE)
    assert failure_of(failed) == CONFLICT
    assert sop_of(failed) == spec.sop_uid
    await assert_retrievable(client, url, original)
    for _ in range(2):  # the same bytes again: success, still stored once
        status, answer = await post(client, [("application/dicom", original)])
        assert status == 200
        assert [sop_of(i) for i in items(answer, REFERENCED_SOP_SEQUENCE)] == [spec.sop_uid]
    status, answer = await post(
        client, [("application/dicom", original), ("application/dicom", original)]
    )
    assert status == 200
    assert len(items(answer, REFERENCED_SOP_SEQUENCE)) == 2
    await assert_retrievable(client, url, original)
    await assert_storage_consistent(runtime, 1)


async def test_parts_of_one_body_racing_for_one_uid(
    runtime: Runtime,
    client: Client,
) -> None:
    """The parts of a body are ingested at once: the same new instance twice is stored once
    (both parts succeed), and two versions of one new UID store one and refuse the other."""
    spec, data = dicom_bytes()
    status, answer = await post(client, [("application/dicom", data)] * 2)
    assert status == 200
    assert [sop_of(i) for i in items(answer, REFERENCED_SOP_SEQUENCE)] == [spec.sop_uid] * 2
    other, first = dicom_bytes(PatientName="One^A")
    _, second = dicom_bytes(other, PatientName="Two^B")
    status, answer = await post(
        client, [("application/dicom", first), ("application/dicom", second)]
    )
    assert status == 202
    (stored,) = items(answer, REFERENCED_SOP_SEQUENCE)
    (failed,) = items(answer, FAILED_SOP_SEQUENCE)
    assert sop_of(stored) == sop_of(failed) == other.sop_uid
    assert failure_of(failed) == CONFLICT
    url = stored[RETRIEVE_URL]["Value"][0]
    _, parts = await get_parts(client, url[len(str(client.make_url(""))) :], ANY_DICOM)
    assert [p.body for p in parts] in ([first], [second])
    await assert_storage_consistent(runtime, 2)


async def test_a_body_of_many_parts_keeps_its_order_and_counts(
    runtime: Runtime,
    client: Client,
) -> None:
    study = Spec().study_uid
    series = [Spec(study_uid=study).series_uid for _ in range(2)]
    sent = [
        dicom_bytes(Spec(study_uid=study, series_uid=series[n % 2], instance_number=n))
        for n in range(24)
    ]
    status, answer = await post(client, [("application/dicom", data) for _, data in sent])
    assert status == 200
    referenced = [sop_of(i) for i in items(answer, REFERENCED_SOP_SEQUENCE)]
    assert referenced == [spec.sop_uid for spec, _ in sent]
    response = await client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
    (found,) = await response.json()
    assert found["00201208"]["Value"] == [24]  # NumberOfStudyRelatedInstances
    assert found["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    for uid in series:
        response = await client.get(f"/dicomweb/studies/{study}/series/{uid}/instances")
        assert len(await response.json()) == 12
    await assert_storage_consistent(runtime, 24)


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/dicom", None, 415),  # a bare instance, not multipart
        ('multipart/related; type="application/dicom+json"; boundary=b', None, 415),
        ('multipart/related; type="application/xml"; boundary=b', None, 415),
        ("multipart/mixed; boundary=b", None, 415),
        (None, None, 415),
        ('multipart/related; type="application/dicom"', None, 400),  # no boundary
        ('multipart/related; type="application/dicom"; boundary=b', b"--b--\r\n", 400),  # no parts
        ('multipart/related; type="application/dicom"; boundary=nothere', None, 400),
        ('multipart/related; type="application/dicom"; boundary=b', b"", 400),
        ('multipart/related; type="application/dicom"; boundary=b', b"\x00garbage" * 100, 400),
    ],
)
async def test_bodies_that_are_refused(
    runtime: Runtime,
    client: Client,
    content_type: str | None,
    body: bytes | None,
    status: int,
) -> None:
    _, data = dicom_bytes()
    if body is None:
        body = multipart([("application/dicom", data)], BOUNDARY)[0]
    headers = {"Content-Type": content_type} if content_type else {}
    skip = set() if content_type else {"Content-Type"}
    response = await client.post(
        "/dicomweb/studies", data=body, headers=headers, skip_auto_headers=skip
    )
    assert response.status == status
    assert "error" in await response.json()
    await assert_storage_consistent(runtime, 0)


@pytest.fixture
async def small_limit(
    ferretdb: FerretServer, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, Client]]:
    """An archive whose max_upload_bytes takes two synthetic instances, not three."""
    size = len(dicom_bytes()[1])
    settings = archive_settings(ferretdb, tmp_path / "home", max_upload_bytes=2 * size + size // 2)
    async with archive(settings) as (runtime, client):
        yield runtime, client


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_upload_limit_stores_nothing(
    small_limit: tuple[Runtime, Client],
    chunked: bool,
) -> None:
    runtime, client = small_limit
    sent = [dicom_bytes()[1] for _ in range(3)]
    body, content_type = multipart([("application/dicom", data) for data in sent])
    assert len(body) > runtime.settings.max_upload_bytes

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    response = await client.post(
        "/dicomweb/studies",
        data=stream() if chunked else body,
        headers={"Content-Type": content_type},
    )
    assert response.status == 413
    await assert_storage_consistent(runtime, 0)
    body, content_type = multipart([("application/dicom", data) for data in sent[:2]])
    response = await client.post(
        "/dicomweb/studies", data=body, headers={"Content-Type": content_type}
    )
    assert response.status == 200  # under the limit
    await assert_storage_consistent(runtime, 2)


async def test_stored_instance_equals_what_was_sent(
    runtime: Runtime,
    client: Client,
) -> None:
    """A pydicom test file stored over STOW-RS comes back byte-exact, and decoded."""
    data = pydicom_bytes("MR_small_RLE.dcm")
    status, answer = await post(client, [("application/dicom", data)])
    assert status == 200
    (item,) = items(answer, REFERENCED_SOP_SEQUENCE)
    url = item[RETRIEVE_URL]["Value"][0]
    await assert_retrievable(client, url, data)
    _, parts = await get_parts(client, url[len(str(client.make_url(""))) :])
    out = pydicom.dcmread(BytesIO(parts[0].body))
    original = pydicom.dcmread(BytesIO(data))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert (out.pixel_array == original.pixel_array).all()
