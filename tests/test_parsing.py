"""Parsing in worker processes: a file that hangs the parser, one that blows its memory and
one that kills it are each rejected with a clear reason, and the archive keeps working with
nothing left behind."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import time
import zlib
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cloudpacs.config import Settings
from cloudpacs.dicom.parse import ParsedInstance, parse_file
from cloudpacs.errors import InvalidDicom
from cloudpacs.http.app import create_app
from cloudpacs.ingest import Outcome, Source
from cloudpacs.metrics import Metrics
from cloudpacs.parsing import ProcessParser, ThreadParser, parser_for
from cloudpacs.runtime import Runtime, build_runtime
from cloudpacs.storage.database import open_database
from cloudpacs.storage.schema import init_schema
from tests.factory import Spec, make_dataset, write_instance
from tests.http.test_stow import (
    FAILED_SOP_SEQUENCE,
    assert_storage_consistent,
    dicom_bytes,
    items,
    post,
)

HANG = "CLOUDPACS-TEST-HANG"
DIE = "CLOUDPACS-TEST-DIE"
MEMORY_CAP = 384 * 1024**2  # a worker maps ~200 MiB before it parses anything
# long enough for a bomb to reach the memory cap on a loaded machine
BOMB_TIMEOUT_SECONDS = 20.0


def misbehaving_parse(path: Path, max_bytes: int | None) -> ParsedInstance:
    """parse_file, except that it hangs or dies on files that ask for it (a stand-in for
    parser bugs we do not know of)."""
    data = path.read_bytes()
    if HANG.encode() in data:
        time.sleep(3600)
    if DIE.encode() in data:
        os.kill(os.getpid(), signal.SIGKILL)
    return parse_file(path, max_bytes)


@functools.cache
def deflate_bomb(inflated_bytes: int) -> bytes:
    """A valid Deflated Explicit VR Little Endian file about 1/1000 of its inflated size:
    pydicom inflates the whole dataset in memory before reading it."""
    ds = make_dataset(Spec())
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    whole = BytesIO()
    ds.save_as(whole, enforce_file_format=True)
    meta_end = 144 + int.from_bytes(whole.getvalue()[140:144], "little")  # after group 2
    plain = DicomBytesIO()
    plain.is_little_endian, plain.is_implicit_VR = True, False
    write_dataset(plain, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # (7FE0,0010) OB with a 4-byte length, then that many zeros
    pixel_head = b"\xe0\x7f\x10\x00OB\x00\x00" + inflated_bytes.to_bytes(4, "little")
    chunks = [deflater.compress(plain.getvalue() + pixel_head)]
    zeros = bytes(1024 * 1024)
    chunks += [deflater.compress(zeros) for _ in range(inflated_bytes // len(zeros))]
    chunks.append(deflater.flush())
    return whole.getvalue()[:meta_end] + b"".join(chunks)


@pytest.fixture
async def parser() -> AsyncIterator[ProcessParser]:
    parser = ProcessParser(1, 1.0, MEMORY_CAP, target=misbehaving_parse)
    yield parser
    await parser.close()


def test_the_bomb_is_small_and_valid(tmp_path: Path) -> None:
    bomb = deflate_bomb(4 * 1024 * 1024)
    assert len(bomb) < 64 * 1024
    (tmp_path / "bomb.dcm").write_bytes(bomb)
    parsed = parse_file(tmp_path / "bomb.dcm")  # harmless at this size, in-process
    assert parsed.transfer_syntax == DeflatedExplicitVRLittleEndian


async def test_a_deflate_bomb_is_rejected_at_the_memory_cap(
    parser: ProcessParser, tmp_path: Path
) -> None:
    (tmp_path / "bomb.dcm").write_bytes(deflate_bomb(1024**3))
    parser.timeout_seconds = BOMB_TIMEOUT_SECONDS
    with pytest.raises(InvalidDicom, match=r"parse exceeded the memory limit \(384 MiB\)"):
        await parser.parse(tmp_path / "bomb.dcm")
    write_instance(tmp_path / "ok.dcm")
    assert (await parser.parse(tmp_path / "ok.dcm")).sop_uid  # the worker still serves


async def test_a_hung_parse_is_killed_and_the_worker_replaced(
    parser: ProcessParser, tmp_path: Path
) -> None:
    write_instance(tmp_path / "hang.dcm", study_description=HANG)
    write_instance(tmp_path / "ok.dcm")
    started = time.monotonic()
    with pytest.raises(InvalidDicom, match=r"parse timed out after 1 s"):
        await parser.parse(tmp_path / "hang.dcm")
    assert time.monotonic() - started < 10
    assert (await parser.parse(tmp_path / "ok.dcm")).sop_uid


async def test_a_dead_worker_is_replaced(parser: ProcessParser, tmp_path: Path) -> None:
    write_instance(tmp_path / "die.dcm", study_description=DIE)
    write_instance(tmp_path / "ok.dcm")
    with pytest.raises(InvalidDicom, match=r"parser process died \(exit code -9\)"):
        await parser.parse(tmp_path / "die.dcm")
    assert (await parser.parse(tmp_path / "ok.dcm")).sop_uid


async def test_a_cancelled_parse_stops_its_worker(parser: ProcessParser, tmp_path: Path) -> None:
    write_instance(tmp_path / "hang.dcm", study_description=HANG)
    write_instance(tmp_path / "ok.dcm")
    task = asyncio.create_task(parser.parse(tmp_path / "hang.dcm"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await parser.parse(tmp_path / "ok.dcm")).sop_uid  # not stuck behind the hang


async def test_rejections_keep_their_uids_across_the_process_boundary(
    parser: ProcessParser, tmp_path: Path
) -> None:
    write_instance(tmp_path / "bad.dcm", study_uid="not a uid")
    with pytest.raises(InvalidDicom, match="StudyInstanceUID") as caught:
        await parser.parse(tmp_path / "bad.dcm")
    assert "Traceback" not in str(caught.value)


def test_settings_choose_the_parser() -> None:
    assert isinstance(parser_for(Settings(parse_workers=0)), ThreadParser)
    parser = parser_for(Settings(parse_workers=3, parse_timeout_seconds=7))
    assert isinstance(parser, ProcessParser)
    assert (parser.workers, parser.timeout_seconds) == (3, 7)


@pytest.fixture
async def hostile_archive(settings: Settings) -> AsyncIterator[Runtime]:
    assert settings.mongo_uri is not None
    database = open_database(settings.mongo_uri, settings.database)
    parser = ProcessParser(1, 3.0, MEMORY_CAP, settings.max_upload_bytes, misbehaving_parse)
    runtime = build_runtime(settings, database, Metrics(), await init_schema(database), parser)
    yield runtime
    await parser.close()
    await database.client.drop_database(settings.database)
    await database.close()


async def test_stow_of_pathological_files_rejects_them_and_keeps_serving(
    hostile_archive: Runtime, tmp_path: Path
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    runtime = hostile_archive
    app = create_app(runtime.services())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        hang = dicom_bytes(Spec(study_description=HANG))[1]
        die = dicom_bytes(Spec(study_description=DIE))[1]
        status, answer = await post(
            client,
            [("application/dicom", deflate_bomb(1024**3)), ("application/dicom", hang)],
        )
        assert status == 409
        reasons = [f["00000902"]["Value"][0] for f in items(answer, FAILED_SOP_SEQUENCE)]
        assert reasons[1] == "parse timed out after 3 s"
        # on a machine too loaded to inflate the bomb to the cap in 3 s, it times out
        assert reasons[0] in ("parse exceeded the memory limit (384 MiB)", reasons[1])
        status, answer = await post(client, [("application/dicom", die)])
        assert status == 409
        await assert_storage_consistent(runtime, 0)
        status, _ = await post(client, [("application/dicom", dicom_bytes()[1])])
        assert status == 200
        assert (await client.get("/dicomweb/studies")).status == 200
        await assert_storage_consistent(runtime, 1)
        path = tmp_path / "direct.dcm"
        write_instance(path)
        result = await runtime.ingestor.ingest(path, Source("test"))
        assert result.outcome is Outcome.STORED


def test_parse_memory_setting_is_checked() -> None:
    from cloudpacs.config import load_settings
    from cloudpacs.errors import ConfigError

    with pytest.raises(ConfigError, match="parse_memory_bytes"):
        load_settings(environ={"CLOUDPACS_PARSE_MEMORY_BYTES": "1000"})
    assert dataclasses.replace(Settings(), parse_memory_bytes=0).parse_memory_bytes == 0
