"""HTTP/1.0 clients (ab, HAProxy's checks and forwarded requests) asking for keep-alive get
streamed answers whose end they can see: without chunked encoding, only closing the
connection marks the end of a body of unknown length."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp.test_utils import TestClient

from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from tests.factory import write_instance

READ_TIMEOUT = 10


async def _http10(host: str, port: int, path: str, accept: str) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n"
            f"Accept: {accept}\r\n\r\n".encode()
        )
        await writer.drain()
        # the whole answer, up to the server closing: a server that keeps the connection
        # open after a body of unknown length leaves this waiting (and the test failing)
        answer = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode(), body


async def test_streamed_answers_end_for_http10_keep_alive_clients(
    runtime: Runtime,
    client: TestClient,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    spec = write_instance(tmp_path / "one.dcm")
    result = await runtime.ingestor.ingest(tmp_path / "one.dcm", Source("test"))
    assert result.outcome is Outcome.STORED
    host, port = client.server.host, client.server.port
    assert port is not None
    series = f"/dicomweb/studies/{spec.study_uid}/series/{spec.series_uid}"

    head, body = await _http10(host, port, f"{series}/metadata", "application/dicom+json")
    assert head.startswith("HTTP/1.0 200") or head.startswith("HTTP/1.1 200"), head
    assert json.loads(body)[0]["00080018"]["Value"] == [spec.sop_uid]

    instance = f"{series}/instances/{spec.sop_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    head, body = await _http10(host, port, instance, accept)
    assert " 200 " in head.splitlines()[0], head
    assert (tmp_path / "one.dcm").read_bytes() in body
