"""Crash safety: what a crash can leave at each point of the write order, and proof that the
sweep repairs it; then a real `cloudpacs ingest` process killed with SIGKILL, repeatedly.

Write order (storage.instances): journal entry -> stored bytes -> instance -> rollups ->
journal entry removed. A journal entry whose file an instance references marks that
instance's rollups as possibly pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import math
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, ObjectId
from pymongo import MongoClient
from pymongo.database import Database as SyncDatabase

from cloudpacs.dicom.parse import parse_file
from cloudpacs.errors import Unavailable
from cloudpacs.ingest import Outcome, Source
from cloudpacs.metrics import Metrics
from cloudpacs.runtime import Runtime, build_runtime
from cloudpacs.storage import documents
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.database import open_database
from cloudpacs.storage.sweep import sweep
from tests.conftest import FerretServer
from tests.factory import Spec, write_instance

CLOUDPACS = Path(sys.executable).with_name("cloudpacs")


# ---- helpers ----------------------------------------------------------------------------
async def totals(runtime: Runtime) -> dict[str, int]:
    db = runtime.database.db
    return {
        name: await db[name].count_documents({})
        for name in ("instances", "uploads", "fs.files", "fs.chunks")
    }


async def crash_after_insert(runtime: Runtime, path: Path) -> dict[str, Any]:
    """Steps 1-3 of the write order, then a 'crash': no journal removal, no rollups."""
    store = runtime.store
    parsed = parse_file(path)
    file_id = await store.upload_file(path, parsed.sop_uid)
    doc = documents.instance_document(
        parsed, file_id, {"kind": "test", "name": ""}, "default", utcnow()
    )
    await store.insert(doc)
    return doc


async def rollups(runtime: Runtime) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    db = runtime.database.db
    studies = {
        d["_id"]: (d["instance_count"], d["series_count"])
        for d in await db.studies.find().to_list(None)
    }
    series = {d["_id"]: d["instance_count"] for d in await db.series.find().to_list(None)}
    return studies, series


# ---- deterministic crash points ---------------------------------------------------------
async def test_crash_before_insert_leaves_an_upload_the_sweep_deletes(
    runtime: Runtime, tmp_path: Path
) -> None:
    spec = write_instance(tmp_path / "a.dcm", rows=512, columns=512)  # several chunks
    file_id = await runtime.store.upload_file(tmp_path / "a.dcm", spec.sop_uid)
    chunks = await runtime.database.db["fs.chunks"].count_documents({"files_id": file_id})
    assert chunks >= 2
    assert await totals(runtime) == {
        "instances": 0,
        "uploads": 1,
        "fs.files": 1,
        "fs.chunks": chunks,
    }

    young = await sweep(runtime.store, grace_seconds=3600)  # could be a live ingest: kept
    assert (young.orphans_deleted, young.uploads_settled) == (0, 0)
    assert (await totals(runtime))["fs.files"] == 1

    report = await sweep(runtime.store, grace_seconds=0)
    assert (report.orphans_deleted, report.uploads_settled, report.studies_repaired) == (1, 0, 0)
    assert await totals(runtime) == {"instances": 0, "uploads": 0, "fs.files": 0, "fs.chunks": 0}
    # and the same file can be ingested afterwards
    result = await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("test"))
    assert result.outcome is Outcome.STORED


@pytest.mark.parametrize("addressing", ["store", "gridfs"])
async def test_crash_mid_upload_leaves_chunks_without_a_file_document(
    runtime: Runtime, addressing: str
) -> None:
    """Chunks written, no files document yet. `store`: chunk ids as cloudpacs writes them
    ("<file id>:<n>"); `gridfs`: as a standard GridFS writer does (random ids), e.g. an
    upload interrupted before cloudpacs had its own file store."""
    db = runtime.database.db
    entry_id = ObjectId()
    await db.uploads.insert_one({"_id": entry_id, "name": "1.2.3", "started_at": utcnow()})
    chunks = [{"files_id": entry_id, "n": n, "data": Binary(os.urandom(1000))} for n in range(3)]
    if addressing == "store":
        for chunk in chunks:
            chunk["_id"] = f"{entry_id}:{chunk['n']}"
    await db["fs.chunks"].insert_many(chunks)
    bystander = await runtime.ingestor.ingest(
        write_instance_path(runtime, "bystander.dcm"), Source("test")
    )
    assert bystander.outcome is Outcome.STORED
    before = await totals(runtime)
    assert before == {"instances": 1, "uploads": 1, "fs.files": 1, "fs.chunks": 4}

    report = await sweep(runtime.store, grace_seconds=0)

    assert report.orphans_deleted == 1
    assert await db["fs.chunks"].count_documents({"files_id": entry_id}) == 0
    assert await db.uploads.count_documents({}) == 0
    assert await totals(runtime) == {"instances": 1, "uploads": 0, "fs.files": 1, "fs.chunks": 1}
    assert await stored(runtime, bystander.sop_uid) == write_instance_path_bytes(runtime)


async def stored(runtime: Runtime, sop_uid: str | None) -> bytes:
    doc = await runtime.database.db.instances.find_one({"_id": sop_uid})
    assert doc is not None
    return b"".join([c async for c in runtime.store.stream_file(doc["file_id"])])


def write_instance_path_bytes(runtime: Runtime) -> bytes:
    return (runtime.settings.home / "files" / "bystander.dcm").read_bytes()


def write_instance_path(runtime: Runtime, name: str) -> Path:
    path = runtime.settings.home / "files" / name
    write_instance(path)
    return path


async def test_crash_after_insert_the_sweep_recomputes_rollups_exactly(
    runtime: Runtime, tmp_path: Path
) -> None:
    db = runtime.database.db
    study, series_a, series_b, series_c = (Spec().study_uid for _ in range(4))
    other = write_instance(tmp_path / "other.dcm")  # another study, complete
    for name, series in (("a1", series_a), ("a2", series_a), ("b1", series_b)):
        write_instance(tmp_path / f"{name}.dcm", study_uid=study, series_uid=series)
    for name in ("other", "a1", "a2", "b1"):
        result = await runtime.ingestor.ingest(tmp_path / f"{name}.dcm", Source("test"))
        assert result.outcome is Outcome.STORED
    assert await rollups(runtime) == (
        {study: (3, 2), other.study_uid: (1, 1)},
        {series_a: 2, series_b: 1, other.series_uid: 1},
    )

    # crash right after the insert: a new instance in series A, one in a new series C ...
    write_instance(tmp_path / "a3.dcm", study_uid=study, series_uid=series_a, modality="MR")
    write_instance(tmp_path / "c1.dcm", study_uid=study, series_uid=series_c)
    await crash_after_insert(runtime, tmp_path / "a3.dcm")
    doc_c = await crash_after_insert(runtime, tmp_path / "c1.dcm")
    # ... and for C, a crash between the series and the study rollup update
    await db.series.update_one(
        {"_id": series_c}, documents.series_upsert([doc_c], utcnow()), upsert=True
    )
    assert await db.uploads.count_documents({}) == 2  # the marks of the pending rollups
    assert (await db.studies.find_one({"_id": study}))["instance_count"] == 3  # type: ignore[index]

    report = await sweep(runtime.store, grace_seconds=0)

    assert (report.orphans_deleted, report.uploads_settled, report.studies_repaired) == (0, 2, 1)
    assert await rollups(runtime) == (
        {study: (5, 3), other.study_uid: (1, 1)},
        {series_a: 3, series_b: 1, series_c: 1, other.series_uid: 1},
    )
    study_doc = await db.studies.find_one({"_id": study})
    assert study_doc is not None
    assert study_doc["modalities"] == ["CT", "MR"]
    assert await totals(runtime) == {"instances": 6, "uploads": 0, "fs.files": 6, "fs.chunks": 6}
    again = await sweep(runtime.store, grace_seconds=0)  # idempotent: nothing left to do
    assert (again.orphans_deleted, again.uploads_settled, again.studies_repaired) == (0, 0, 0)


async def test_crash_while_overwriting_leaves_an_old_file_only_the_full_sweep_finds(
    runtime: Runtime, tmp_path: Path
) -> None:
    """conflict_policy=overwrite: the new document replaced the old one, the new file's
    entry was settled, and the process died before deleting the old file, which neither an
    instance nor the journal names any more."""
    store, db = runtime.store, runtime.database.db
    spec = write_instance(tmp_path / "v1.dcm")
    assert (await runtime.ingestor.ingest(tmp_path / "v1.dcm", Source("t"))).outcome.value == (
        "stored"
    )
    old = await db.instances.find_one({"_id": spec.sop_uid})
    assert old is not None
    write_instance(tmp_path / "v2.dcm", dataclasses.replace(spec, patient_id="P0002"))
    parsed = parse_file(tmp_path / "v2.dcm")
    new_id = await store.upload_file(tmp_path / "v2.dcm", spec.sop_uid)
    doc = documents.instance_document(
        parsed, new_id, {"kind": "t", "name": ""}, "default", utcnow()
    )
    assert await store.replace(doc, old["sha256"])
    await store.settle_uploads([new_id])  # ... and the crash, before deleting old["file_id"]

    periodic = await sweep(store, grace_seconds=0)
    assert periodic.unjournaled_deleted == 0
    assert await db["fs.files"].count_documents({}) == 2
    young = await sweep(store, grace_seconds=3600, full=True)
    assert young.unjournaled_deleted == 0

    await asyncio.sleep(1.1)  # past the sweep's margin for millisecond upload dates
    report = await sweep(store, grace_seconds=0, full=True)

    assert report.unjournaled_deleted == 1
    assert await db["fs.files"].distinct("_id") == [new_id]
    assert await db["fs.chunks"].distinct("files_id") == [new_id]
    assert await totals(runtime) == {"instances": 1, "uploads": 0, "fs.files": 1, "fs.chunks": 1}
    content = b"".join([c async for c in store.stream_file(new_id)])
    assert content == (tmp_path / "v2.dcm").read_bytes()
    assert await rollups(runtime) == ({spec.study_uid: (1, 1)}, {spec.series_uid: 1})


async def test_a_recent_pending_instance_is_left_to_its_live_ingest(
    runtime: Runtime, tmp_path: Path
) -> None:
    write_instance(tmp_path / "x.dcm")
    await crash_after_insert(runtime, tmp_path / "x.dcm")
    report = await sweep(runtime.store, grace_seconds=3600)
    assert (report.uploads_settled, report.studies_repaired) == (0, 0)
    assert await runtime.database.db.uploads.count_documents({}) == 1
    assert await runtime.database.db.studies.count_documents({}) == 0


async def test_instances_flagged_by_earlier_versions_are_still_repaired(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Before the journal marked pending rollups, an instance carried `rollup_pending`."""
    db = runtime.database.db
    spec = write_instance(tmp_path / "x.dcm")
    doc = await crash_after_insert(runtime, tmp_path / "x.dcm")
    await runtime.store.settle_uploads([doc["file_id"]])  # the old order: settled first
    await db.instances.update_one({"_id": spec.sop_uid}, {"$set": {"rollup_pending": True}})

    report = await sweep(runtime.store, grace_seconds=0)

    assert (report.uploads_settled, report.studies_repaired) == (0, 1)
    assert await rollups(runtime) == ({spec.study_uid: (1, 1)}, {spec.series_uid: 1})
    assert await db.instances.count_documents({"rollup_pending": True}) == 0


# ---- a reply lost after the insert reached the server ----------------------------------
INSTANCE_INSERT = b"\x02insert\x00" + struct.pack("<i", 10) + b"instances\x00"


class ReplyDroppingProxy:
    """A loopback TCP proxy to FerretDB. Once armed, it forwards the next insert into
    `instances` to the server, lets the server execute it, and then drops the connection
    instead of relaying the reply: the client cannot know whether the insert happened."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.tripped = False
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {c_writer, s_writer}
        doomed = asyncio.Event()
        pumps = [
            asyncio.create_task(self._requests(c_reader, s_writer, doomed)),
            asyncio.create_task(self._replies(s_reader, c_writer, doomed)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for writer in (c_writer, s_writer):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, doomed: asyncio.Event
    ) -> None:
        while message := await _message(reader):
            if self.armed and INSTANCE_INSERT in message:
                self.armed, self.tripped = False, True
                doomed.set()
            writer.write(message)
            await writer.drain()

    async def _replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, doomed: asyncio.Event
    ) -> None:
        while message := await _message(reader):
            if doomed.is_set():
                return  # the insert's reply: dropped, and the connection with it
            writer.write(message)
            await writer.drain()


async def _message(reader: asyncio.StreamReader) -> bytes:
    """One wire-protocol message (int32 total length first), or b"" at end of stream."""
    try:
        header = await reader.readexactly(4)
        return header + await reader.readexactly(struct.unpack("<i", header)[0] - 4)
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""


async def test_a_lost_insert_reply_never_costs_the_stored_file(
    runtime: Runtime, ferretdb: FerretServer, tmp_path: Path
) -> None:
    """The connection drops after the server stored the instance but before the reply
    arrived. The ingest fails as unavailable (the caller keeps the source and retries);
    the stored instance must keep its file, or the retry, seeing a duplicate, would let
    the source be deleted and the bytes would be lost for good."""
    proxy = ReplyDroppingProxy(ferretdb.port)
    await proxy.start()
    settings = runtime.settings
    database = open_database(f"mongodb://127.0.0.1:{proxy.port}/", settings.database, 3000)
    proxied = build_runtime(settings, database, Metrics(), [])
    try:
        spec = write_instance(tmp_path / "a.dcm")
        data = (tmp_path / "a.dcm").read_bytes()
        proxy.armed = True
        with pytest.raises(Unavailable):
            await proxied.ingestor.ingest(tmp_path / "a.dcm", Source("test"))
        assert proxy.tripped

        doc = await runtime.database.db.instances.find_one({"_id": spec.sop_uid})
        assert doc is not None, "the server did store the instance"
        files = runtime.database.db["fs.files"]
        assert await files.find_one({"_id": doc["file_id"]}) is not None, "its file was deleted"

        retry = await proxied.ingestor.ingest(tmp_path / "a.dcm", Source("test"))
        assert retry.outcome is Outcome.DUPLICATE  # the runner would now delete the source
        report = await sweep(runtime.store, grace_seconds=0)
        assert (report.orphans_deleted, report.uploads_settled, report.studies_repaired) == (
            0,
            1,
            1,
        )
        content = b"".join([c async for c in runtime.store.stream_file(doc["file_id"])])
        assert content == data
        study = await runtime.database.db.studies.find_one({"_id": spec.study_uid})
        assert study is not None and study["instance_count"] == 1
        assert await totals(runtime) == {
            "instances": 1,
            "uploads": 0,
            "fs.files": 1,
            "fs.chunks": 1,
        }
    finally:
        await proxied.parser.close()
        await database.close()
        await proxy.stop()


# ---- a real process, killed -------------------------------------------------------------
KILL_FILES = 240
# Stored instances at which the process is killed. Each restart can wait up to a minute
# for the rollup locks the killed process held to expire (storage.locks).
KILL_AT = (40, 130)


def cli_env(ferretdb: FerretServer, database: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPACS_")}
    env.update(
        CLOUDPACS_MONGO_URI=ferretdb.uri,
        CLOUDPACS_DATABASE=database,
        CLOUDPACS_HOME=str(home),
        CLOUDPACS_WATCH=str(home / "inbox"),
        CLOUDPACS_FILE_SETTLE_SECONDS="0.2",
        CLOUDPACS_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end are killed by PID."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def sync_db(ferretdb: FerretServer) -> Iterator[SyncDatabase[dict[str, Any]]]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    client: MongoClient[dict[str, Any]] = MongoClient(ferretdb.uri, tz_aware=True)
    yield client[name]
    client.drop_database(name)
    client.close()


def wait_until(check: Any, within: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + within
    while not check():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"cloudpacs exited early with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        time.sleep(0.05)


def inbox_files(inbox: Path) -> set[str]:
    return {n for _, _, names in os.walk(inbox) for n in names}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("file_store", ["gridfs", "directory"])
def test_sigkill_mid_ingest_then_restart_loses_and_duplicates_nothing(
    ferretdb: FerretServer,
    sync_db: SyncDatabase[dict[str, Any]],
    killable: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    file_store: str,
) -> None:
    home = tmp_path / "home"
    inbox = home / "inbox"
    studies = [Spec() for _ in range(3)]
    originals: dict[str, tuple[str, str]] = {}  # sop uid -> (file name, sha256)
    for i in range(KILL_FILES):
        base = studies[i % 3]
        series = base.series_uid if i % 2 else base.sop_uid  # two series per study
        spec = write_instance(
            inbox / f"{i // 60}" / f"{i:04d}.dcm", study_uid=base.study_uid, series_uid=series
        )
        data = (inbox / f"{i // 60}" / f"{i:04d}.dcm").read_bytes()
        originals[spec.sop_uid] = (f"{i:04d}.dcm", hashlib.sha256(data).hexdigest())
    env = cli_env(ferretdb, sync_db.name, home, CLOUDPACS_FILE_STORE=file_store)

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "cloudpacs.log").open("ab") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                [str(CLOUDPACS), "ingest"], env=env, stdout=log, stderr=log, cwd=tmp_path
            )
        killable.append(process)
        return process

    def stored() -> set[str]:
        return set(sync_db.instances.distinct("_id"))

    process = start()
    for threshold in KILL_AT:
        wait_until(lambda t=threshold: len(stored()) >= t, 240, process)  # type: ignore[misc]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        left, done = inbox_files(inbox), stored()
        lost = {sop for sop, (name, _) in originals.items() if sop not in done and name not in left}
        assert not lost, f"lost after SIGKILL: {sorted(lost)[:3]}"
        process = start()
    wait_until(lambda: not inbox_files(inbox), 300, process)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(30) == 0

    sweep_run = subprocess.run(
        [str(CLOUDPACS), "db", "sweep"],
        env={**env, "CLOUDPACS_ORPHAN_GRACE_SECONDS": "0"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert sweep_run.returncode == 0, sweep_run.stderr.decode()
    print(f"\n{sweep_run.stdout.decode().strip()}")

    # every original stored exactly once, byte-exact
    instances = list(
        sync_db.instances.find({}, {"sha256": 1, "file_id": 1, "study": 1, "series": 1})
    )
    assert len(instances) == KILL_FILES
    assert {d["_id"] for d in instances} == set(originals)
    contents = (
        gridfs_contents(sync_db, instances)
        if file_store == "gridfs"
        else directory_contents(home / "store", instances)
    )
    for doc in instances:
        digest = hashlib.sha256(contents[doc["file_id"]]).hexdigest()
        assert digest == doc["sha256"] == originals[doc["_id"]][1]
    assert sync_db.uploads.count_documents({}) == 0
    assert sync_db.instances.count_documents({"rollup_pending": True}) == 0
    # rollups equal the instances
    per_study = Counter(d["study"] for d in instances)
    per_series = Counter(d["series"] for d in instances)
    series_of: dict[str, set[str]] = {}
    for d in instances:
        series_of.setdefault(d["study"], set()).add(d["series"])
    assert {d["_id"]: d["instance_count"] for d in sync_db.studies.find()} == per_study
    assert {d["_id"]: d["series_count"] for d in sync_db.studies.find()} == {
        k: len(v) for k, v in series_of.items()
    }
    assert {d["_id"]: d["instance_count"] for d in sync_db.series.find()} == per_series
    assert not (home / "failed").exists() or not inbox_files(home / "failed")


def gridfs_contents(db: SyncDatabase[dict[str, Any]], instances: list[Any]) -> dict[Any, bytes]:
    """Each instance's stored bytes; asserts that GridFS holds nothing else, nothing half."""
    files = {d["_id"]: d for d in db["fs.files"].find()}
    contents = {}
    for doc in instances:
        grid = files.get(doc["file_id"])
        assert grid is not None, f"{doc['_id']}: GridFS file missing"
        chunks = db["fs.chunks"].find({"files_id": doc["file_id"]}).sort("n", 1)
        contents[doc["file_id"]] = b"".join(chunk["data"] for chunk in chunks)
        assert len(contents[doc["file_id"]]) == grid["length"]
    referenced = {d["file_id"] for d in instances}
    assert set(files) == referenced
    assert set(db["fs.chunks"].distinct("files_id")) == referenced
    chunk_total = db["fs.chunks"].count_documents({})
    assert chunk_total == sum(math.ceil(f["length"] / f["chunkSize"]) for f in files.values())
    return contents


def directory_contents(root: Path, instances: list[Any]) -> dict[Any, bytes]:
    """Each instance's stored bytes; asserts that the directory holds nothing else (no part
    file, no unreferenced file) besides its archive marker."""
    on_disk = {path.name: path for path in root.rglob("*") if path.is_file()}
    assert on_disk.pop("ARCHIVE").read_text().strip()
    assert set(on_disk) == {str(d["file_id"]) for d in instances}
    return {d["file_id"]: on_disk[str(d["file_id"])].read_bytes() for d in instances}
