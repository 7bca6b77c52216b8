"""The file stores (storage.file_stores): which one an archive gets, and the directory store's
crash safety, against a real FerretDB and real files.

The crash points are those of tests/storage/test_crash.py (GridFS), for plain files."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from cloudpacs.config import Settings
from cloudpacs.dicom.parse import parse_file
from cloudpacs.errors import ConfigError, NotFound
from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from cloudpacs.storage import documents
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.database import open_database
from cloudpacs.storage.directory_files import DirectoryFiles
from cloudpacs.storage.file_stores import open_file_store
from cloudpacs.storage.schema import init_schema
from cloudpacs.storage.sweep import sweep
from tests.factory import write_instance

DIRECTORY = pytest.mark.parametrize("file_store_kind", ["directory"])


def on_disk(root: Path) -> set[str]:
    """Names of the stored files (part files included), without the archive marker."""
    return {p.name for p in root.rglob("*") if p.is_file() and p.name != "ARCHIVE"}


@DIRECTORY
async def test_files_are_stored_byte_exact_and_read_by_range(
    runtime: Runtime, tmp_path: Path
) -> None:
    store = runtime.store
    assert isinstance(store.blobs, DirectoryFiles)
    data = bytes(range(256)) * 12_000  # 3 MB: several read blocks
    (tmp_path / "big").write_bytes(data)
    file_id = await store.upload_file(tmp_path / "big", "1.2.3")

    path = store.blobs.path(file_id)
    assert path.read_bytes() == data
    assert path.relative_to(runtime.settings.file_dir).parts[:2] == (
        str(file_id)[0:2],
        str(file_id)[2:4],
    )
    assert b"".join([c async for c in store.stream_file(file_id)]) == data
    for offset, length in ((0, 10), (1024 * 1024 - 3, 7), (2_000_000, 1_500_000), (len(data), 5)):
        got = b"".join([c async for c in store.read_range(file_id, offset, length)])
        assert got == data[offset : offset + length]

    await store.delete_files([file_id])
    assert not path.exists()
    with pytest.raises(NotFound):
        [c async for c in store.stream_file(file_id)]


@DIRECTORY
async def test_crash_before_insert_leaves_a_file_the_sweep_deletes(
    runtime: Runtime, tmp_path: Path
) -> None:
    root = runtime.settings.file_dir
    spec = write_instance(tmp_path / "a.dcm")
    file_id = await runtime.store.upload_file(tmp_path / "a.dcm", spec.sop_uid)
    assert on_disk(root) == {str(file_id)}

    young = await sweep(runtime.store, grace_seconds=3600)  # could be a live ingest: kept
    assert (young.orphans_deleted, young.uploads_settled) == (0, 0)
    assert on_disk(root) == {str(file_id)}

    report = await sweep(runtime.store, grace_seconds=0)
    assert (report.orphans_deleted, report.uploads_settled) == (1, 0)
    assert on_disk(root) == set()
    assert await runtime.database.db.uploads.count_documents({}) == 0
    result = await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("test"))
    assert result.outcome is Outcome.STORED


@DIRECTORY
async def test_crash_mid_write_leaves_a_part_file_the_sweep_deletes(
    runtime: Runtime, tmp_path: Path
) -> None:
    db, root = runtime.database.db, runtime.settings.file_dir
    entry_id = ObjectId()
    await db.uploads.insert_one({"_id": entry_id, "name": "1.2.3", "started_at": utcnow()})
    final = runtime.store.blobs.path(entry_id)  # type: ignore[attr-defined]
    final.parent.mkdir(parents=True)
    part = final.with_name(f".{entry_id}.part")
    part.write_bytes(b"half a file")
    write_instance(tmp_path / "bystander.dcm")
    bystander = await runtime.ingestor.ingest(tmp_path / "bystander.dcm", Source("test"))
    assert bystander.outcome is Outcome.STORED

    report = await sweep(runtime.store, grace_seconds=0)

    assert report.orphans_deleted == 1
    assert not part.exists()
    doc = await db.instances.find_one({"_id": bystander.sop_uid})
    assert doc is not None
    assert on_disk(root) == {str(doc["file_id"])}
    content = b"".join([c async for c in runtime.store.stream_file(doc["file_id"])])
    assert content == (tmp_path / "bystander.dcm").read_bytes()


@DIRECTORY
async def test_an_old_file_no_journal_names_is_found_by_the_full_sweep(
    runtime: Runtime, tmp_path: Path
) -> None:
    """conflict_policy=overwrite, killed before deleting the replaced file."""
    store, root = runtime.store, runtime.settings.file_dir
    spec = write_instance(tmp_path / "v1.dcm")
    assert (await runtime.ingestor.ingest(tmp_path / "v1.dcm", Source("t"))).outcome.value == (
        "stored"
    )
    old = await runtime.database.db.instances.find_one({"_id": spec.sop_uid})
    assert old is not None
    write_instance(tmp_path / "v2.dcm", dataclasses.replace(spec, patient_id="P0002"))
    new_id = await store.upload_file(tmp_path / "v2.dcm", spec.sop_uid)
    doc = documents.instance_document(
        parse_file(tmp_path / "v2.dcm"), new_id, {"kind": "t", "name": ""}, "default", utcnow()
    )
    assert await store.replace(doc, old["sha256"])
    await store.settle_uploads([new_id])

    assert (await sweep(store, grace_seconds=0)).unjournaled_deleted == 0
    assert (await sweep(store, grace_seconds=3600, full=True)).unjournaled_deleted == 0
    await asyncio.sleep(1.1)
    report = await sweep(store, grace_seconds=0, full=True)

    assert report.unjournaled_deleted == 1
    assert on_disk(root) == {str(new_id)}
    assert store.blobs.path(new_id).read_bytes() == (tmp_path / "v2.dcm").read_bytes()  # type: ignore[attr-defined]


@DIRECTORY
async def test_a_cancelled_upload_leaves_no_file_behind(runtime: Runtime, tmp_path: Path) -> None:
    """Cancelled before, during and after the copy: nothing stays on disk, and what the
    journal still names (an entry whose insert was cut off) the sweep settles."""
    (tmp_path / "big").write_bytes(b"\0" * 200 * 1024 * 1024)
    for delay in (0.0, 0.01, 0.05):
        task = asyncio.create_task(runtime.store.upload_file(tmp_path / "big", "1.2.3"))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the shielded cleanup finishes
        assert on_disk(runtime.settings.file_dir) == set()
    await sweep(runtime.store, grace_seconds=0)
    assert await runtime.database.db.uploads.count_documents({}) == 0


# ---- which store an archive gets ----------------------------------------------------------
async def store_kind(settings: Settings, uri: str) -> str:
    database = open_database(uri, settings.database)
    try:
        await init_schema(database)
        return (await open_file_store(database, settings)).kind
    finally:
        await database.close()


async def test_the_choice_is_made_once_and_kept(settings: Settings) -> None:
    uri = settings.mongo_uri
    assert uri is not None
    embedded = dataclasses.replace(settings, mongo_uri=None)
    assert await store_kind(embedded, uri) == "directory"  # a new embedded archive
    assert (settings.file_dir / "ARCHIVE").is_file()
    assert await store_kind(settings, uri) == "directory"  # recorded: kept when configured
    with pytest.raises(ConfigError, match="keeps its files in directory, not gridfs"):
        await store_kind(dataclasses.replace(settings, file_store="gridfs"), uri)

    other = dataclasses.replace(settings, database=settings.database + "b")
    assert await store_kind(other, uri) == "gridfs"  # a new archive on a configured server
    with pytest.raises(ConfigError, match="keeps its files in gridfs"):
        await store_kind(dataclasses.replace(other, mongo_uri=None, file_store="directory"), uri)
    database = open_database(uri, other.database)
    await database.client.drop_database(other.database)
    await database.close()


async def test_an_embedded_archive_with_gridfs_files_stays_on_gridfs(
    settings: Settings,
) -> None:
    """Archives from before the directory store keep their files where they are."""
    uri = settings.mongo_uri
    assert uri is not None
    database = open_database(uri, settings.database)
    await database.db["fs.files"].insert_one({"_id": ObjectId(), "length": 0})
    await database.close()
    with pytest.raises(ConfigError, match="already keeps files in GridFS"):
        await store_kind(dataclasses.replace(settings, file_store="directory"), uri)
    assert await store_kind(dataclasses.replace(settings, mongo_uri=None), uri) == "gridfs"
    assert not settings.file_dir.exists()


@DIRECTORY
async def test_a_wrong_or_missing_directory_is_refused(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    uri = settings.mongo_uri
    assert uri is not None
    write_instance(tmp_path / "a.dcm")
    assert (await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("t"))).outcome.value == (
        "stored"
    )
    assert await store_kind(settings, uri) == "directory"

    empty = dataclasses.replace(settings, file_store_dir=tmp_path / "unmounted")
    with pytest.raises(ConfigError, match="holds none of this archive's files"):
        await store_kind(empty, uri)
    assert not (tmp_path / "unmounted" / "ARCHIVE").exists()

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "ARCHIVE").write_text("0123abcd\n")
    with pytest.raises(ConfigError, match="belongs to another archive"):
        await store_kind(dataclasses.replace(settings, file_store_dir=tmp_path / "elsewhere"), uri)


@DIRECTORY
async def test_readiness_fails_while_the_directory_is_gone(
    runtime: Runtime,
    client: Any,
) -> None:
    root = runtime.settings.file_dir
    assert (await client.get("/readyz")).status == 200
    root.rename(root.with_name("unmounted"))
    answer = await client.get("/readyz")
    assert answer.status == 503
    assert "file directory" in (await answer.json())["reason"]
    root.with_name("unmounted").rename(root)
    assert (await client.get("/readyz")).status == 200


@DIRECTORY
async def test_plain_files_are_sent_whole_with_their_length(
    runtime: Runtime, client: Any, tmp_path: Path
) -> None:
    """As stored, instances of the directory store go out by sendfile, with a
    Content-Length; a file that disappeared is a 404 before the answer starts."""
    first = write_instance(tmp_path / "1.dcm", instance_number=1, rows=64, columns=64)
    place = {"study_uid": first.study_uid, "series_uid": first.series_uid}
    for n in (2, 3):
        write_instance(tmp_path / f"{n}.dcm", instance_number=n, rows=64, columns=64, **place)
    paths = [tmp_path / f"{n}.dcm" for n in (1, 2, 3)]
    for path in paths:
        assert (await runtime.ingestor.ingest(path, Source("test"))).outcome is Outcome.STORED
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    series_url = f"/dicomweb/studies/{first.study_uid}/series/{first.series_uid}"
    instance_url = f"{series_url}/instances/{first.sop_uid}"
    for url, expected in ((instance_url, paths[:1]), (series_url, paths)):
        response = await client.get(url, headers=accept)
        body = await response.read()
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(body))
        boundary = response.headers["Content-Type"].split("boundary=")[1].encode()
        chunks = body.split(b"--" + boundary)
        assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
        sent = [chunk.split(b"\r\n\r\n", 1)[1][:-2] for chunk in chunks[1:-1]]
        assert sent == [path.read_bytes() for path in expected]

    doc = await runtime.database.db.instances.find_one({"_id": first.sop_uid})
    assert doc is not None
    assert isinstance(runtime.store.blobs, DirectoryFiles)
    runtime.store.blobs.path(doc["file_id"]).unlink()
    assert (await client.get(instance_url, headers=accept)).status == 404
