"""Limits on hostile requests, over real HTTP: parts per STOW-RS request, header sizes,
concurrent uploads, request time; and error bodies that give nothing internal away."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cloudpacs.errors import InvalidDicom
from cloudpacs.http.access import RULES, Rule
from cloudpacs.http.app import MAX_FIELD_SIZE, MAX_LINE_SIZE, create_app
from cloudpacs.http.stow import UPLOAD_SLOTS
from cloudpacs.ingest import Source
from cloudpacs.runtime import Runtime
from tests.conftest import FerretServer
from tests.factory import Spec
from tests.http.test_stow import assert_storage_consistent, dicom_bytes, multipart, post
from tests.http.test_wado import ANY_DICOM, Client, archive, archive_settings, instance_url

INTERNALS = ("Traceback", "Error", "Exception", "/work", "/tmp", "site-packages", ".py")


def assert_opaque(text: str) -> None:
    """No stack trace, exception class name or path in an error body."""
    for word in INTERNALS:
        assert word not in text, (word, text)


@pytest.fixture
async def limited(ferretdb: FerretServer, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Client]]:
    settings = archive_settings(
        ferretdb,
        tmp_path / "home",
        max_stow_parts=2,
        max_concurrent_uploads=1,
        request_timeout_seconds=1.0,
    )
    async with archive(settings) as (runtime, client):
        yield runtime, client


async def test_too_many_parts_is_413_and_stores_nothing(limited: tuple[Runtime, Client]) -> None:
    runtime, client = limited
    status, answer = await post(client, [("application/dicom", dicom_bytes()[1])] * 3)
    assert status == 413
    assert "max_stow_parts" in answer["error"]
    await assert_storage_consistent(runtime, 0)
    status, _ = await post(client, [("application/dicom", dicom_bytes()[1])] * 2)
    assert status == 200
    await assert_storage_consistent(runtime, 1)  # the same instance twice: one stored


async def test_uploads_over_the_limit_get_503_and_retry_after(
    limited: tuple[Runtime, Client],
) -> None:
    _, client = limited
    body, content_type = multipart([("application/dicom", dicom_bytes()[1])])
    half = len(body) // 2
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:half]
        await release.wait()
        yield body[half:]

    first = asyncio.create_task(
        client.post("/dicomweb/studies", data=slow_body(), headers={"Content-Type": content_type})
    )
    for _ in range(100):  # until the first upload holds the one slot
        await asyncio.sleep(0.01)
        if client.app is not None and client.app[UPLOAD_SLOTS].in_use == 1:
            break
    second = await client.post(
        "/dicomweb/studies", data=body, headers={"Content-Type": content_type}
    )
    assert second.status == 503
    assert second.headers["Retry-After"]
    assert "max_concurrent_uploads" in (await second.json())["error"]
    release.set()
    assert (await first).status == 200
    again = await client.post(
        "/dicomweb/studies", data=body, headers={"Content-Type": content_type}
    )
    assert again.status == 200  # duplicate: the slot was given back


async def test_a_slow_upload_is_cut_at_the_deadline(limited: tuple[Runtime, Client]) -> None:
    runtime, client = limited
    body, content_type = multipart([("application/dicom", dicom_bytes()[1])])

    async def trickle() -> AsyncIterator[bytes]:
        step = len(body) // 8 + 1
        for start in range(0, len(body), step):
            yield body[start : start + step]
            await asyncio.sleep(0.4)  # the whole body takes ~ 3 s, the limit is 1 s

    response = await client.post(
        "/dicomweb/studies", data=trickle(), headers={"Content-Type": content_type}
    )
    assert response.status == 503
    text = await response.text()
    assert "request_timeout_seconds" in text
    assert_opaque(text)
    await assert_storage_consistent(runtime, 0)


async def test_a_streamed_answer_is_not_cut_at_the_deadline(
    limited: tuple[Runtime, Client], tmp_path: Path
) -> None:
    """A WADO-RS answer that started within the deadline may take longer to send."""
    runtime, client = limited
    spec = Spec(rows=1024, columns=1024, frames=8)  # 16 MiB of pixels
    _, data = dicom_bytes(spec)
    (tmp_path / "big.dcm").write_bytes(data)
    result = await runtime.ingestor.ingest(tmp_path / "big.dcm", Source("test"))
    response = await client.get(instance_url(result), headers={"Accept": ANY_DICOM})
    assert response.status == 200
    received = 0
    started = asyncio.get_running_loop().time()
    async for chunk in response.content.iter_chunked(256 * 1024):
        received += len(chunk)
        await asyncio.sleep(0.03)  # a slow reader: ~ 2 s for the whole answer
    assert asyncio.get_running_loop().time() - started > runtime.settings.request_timeout_seconds
    assert received > len(data)  # all of it, with the multipart framing


async def test_a_slow_handler_gets_a_clear_503(runtime: Runtime) -> None:
    settings = dataclasses.replace(runtime.settings, request_timeout_seconds=0.3)
    app = create_app(dataclasses.replace(runtime.services(), settings=settings))

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response()

    app.router.add_get("/slow", slow)
    app[RULES][slow] = Rule("test")  # deny by default: a route needs its rule
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/slow")
        assert response.status == 503
        assert response.headers["Retry-After"]
        assert (await response.json())["error"] == (
            "the request took longer than 0.3 s (request_timeout_seconds)"
        )


async def test_internal_errors_are_opaque(runtime: Runtime) -> None:
    app = create_app(runtime.services())

    async def broken(request: web.Request) -> web.Response:
        raise KeyError("/work/secret/path.py")

    async def broken_dicom(request: web.Request) -> web.Response:
        # a CloudPacsError the table does not know still answers an opaque 500
        raise RuntimeError(f"at {Path(__file__)}") from InvalidDicom("x")

    app.router.add_get("/broken", broken)
    app.router.add_get("/broken-dicom", broken_dicom)
    app[RULES].update({broken: Rule("test"), broken_dicom: Rule("test")})
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for url in ("/broken", "/broken-dicom"):
            response = await client.get(url)
            assert response.status == 500
            answer = await response.json()
            assert answer["error"] == "internal error"
            assert_opaque(await response.text())


async def raw_request(client: Client, head: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (the client library refuses oversized headers itself)."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), answer


@pytest.mark.parametrize(
    "head",
    [
        b"GET /dicomweb/studies?PatientID=" + b"x" * MAX_LINE_SIZE + b" HTTP/1.1\r\n\r\n",
        b"GET /dicomweb/studies HTTP/1.1\r\nX-Big: " + b"y" * MAX_FIELD_SIZE + b"\r\n\r\n",
        b"GET /dicomweb/studies HTTP/1.1\r\n" + b"X-Many: z\r\n" * 40_000 + b"\r\n",
    ],
    ids=["request-line", "header-field", "header-count"],
)
async def test_oversized_request_heads_are_refused(client: Client, head: bytes) -> None:
    status, answer = await raw_request(client, head)
    assert 400 <= status < 500, answer[:300]
    assert_opaque(answer.decode("latin-1"))
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"garbage", 'multipart/related; type="application/dicom"; boundary=b'),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nxx", "multipart/related; boundary=b"),
        (b"--b\r\n\r\n\x00\x01\r\n--b--\r\n", 'multipart/related; boundary="b'),
        (b"", "multipart/related"),
        (b"x", "text/plain"),
    ],
)
async def test_malformed_stow_requests_say_nothing_internal(
    runtime: Runtime, client: Client, body: bytes, content_type: str
) -> None:
    response = await client.post(
        "/dicomweb/studies", data=body, headers={"Content-Type": content_type}
    )
    assert 400 <= response.status < 500
    assert_opaque(await response.text())
    await assert_storage_consistent(runtime, 0)
