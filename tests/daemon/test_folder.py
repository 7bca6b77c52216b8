"""The watched-folder daemon against a real FerretDB and real files: discovery (start-up scan,
new files, nested folders, folders moved in whole), settling, disposal of finished files,
refusals, a burst of 2,000 files, a database outage and a graceful stop."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cloudpacs.config import Settings
from cloudpacs.daemon.folder import FolderSource
from cloudpacs.daemon.service import FolderDaemon
from cloudpacs.ingest import UID_IN_USE, Outcome, Source
from cloudpacs.runtime import Runtime
from tests.conftest import FerretServer
from tests.factory import Spec, make_dataset, write_instance, write_study

NOT_DICOM_REASON = (
    "not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble "
    "or no File Meta Information"
)
StartDaemon = Callable[[Settings], Awaitable[FolderDaemon]]


# ---- helpers ----------------------------------------------------------------------------
async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Wait until the async `check` is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.1)


def files_under(folder: Path) -> list[Path]:
    """Every file (and symlink) below `folder`, as paths relative to it."""
    if not folder.exists():
        return []
    return sorted(
        (Path(d) / n).relative_to(folder)
        for d, dirs, names in os.walk(folder)
        for n in names + [x for x in dirs if (Path(d) / x).is_symlink()]
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def count(runtime: Runtime, collection: str, query: dict[str, Any] | None = None) -> int:
    return int(await runtime.database.db[collection].count_documents(query or {}))


async def stored_content(runtime: Runtime, sop_uid: str) -> bytes:
    doc = await runtime.database.db.instances.find_one({"_id": sop_uid})
    assert doc is not None, f"{sop_uid} not stored"
    return b"".join([chunk async for chunk in runtime.store.stream_file(doc["file_id"])])


def write_without_study_uid(path: Path) -> None:
    ds = make_dataset(Spec())
    del ds.StudyInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
async def start_daemon(runtime: Runtime) -> AsyncIterator[StartDaemon]:
    """Start FolderDaemons on the runtime's ingestor; every one is stopped at the end."""
    daemons: list[FolderDaemon] = []

    async def start(settings: Settings) -> FolderDaemon:
        daemon = FolderDaemon(settings, runtime.ingestor)
        await daemon.start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        await daemon.stop()


# ---- discovery and disposal -------------------------------------------------------------
async def test_files_present_before_start_are_ingested_then_deleted(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon
) -> None:
    inbox = settings.inbox
    specs = {
        "a.dcm": write_instance(inbox / "a.dcm"),
        "deep/er/b.dcm": write_instance(inbox / "deep" / "er" / "b.dcm"),
        "c": write_instance(inbox / "c"),  # no extension needed
    }
    originals = {name: (inbox / name).read_bytes() for name in specs}

    await start_daemon(settings)
    await eventually(lambda: _empty_and_stored(runtime, inbox, 3))

    for name, spec in specs.items():
        doc = await runtime.database.db.instances.find_one({"_id": spec.sop_uid})
        assert doc is not None
        assert doc["source"] == {"kind": "folder", "name": name}
        assert doc["sha256"] == sha256(originals[name])
        assert await stored_content(runtime, spec.sop_uid) == originals[name]
    assert files_under(inbox) == []
    assert files_under(settings.failed_dir) == []
    assert not settings.done_dir.exists()


async def _empty_and_stored(runtime: Runtime, inbox: Path, n: int) -> bool:
    return not files_under(inbox) and await count(runtime, "instances") == n


async def test_new_files_nested_folders_and_a_folder_moved_in_are_ingested(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    inbox = settings.inbox
    await start_daemon(settings)

    top = write_instance(inbox / "top.dcm")
    nested = write_instance(inbox / "x" / "y" / "z" / "nested.dcm")  # folders made after start
    staging = tmp_path / "staging" / "study"
    moved = write_study(staging, n_series=2, per_series=2)
    os.rename(staging, inbox / "moved-in")  # the whole folder arrives at once

    expected = {top.sop_uid, nested.sop_uid, *(spec.sop_uid for _, spec in moved)}
    await eventually(lambda: _empty_and_stored(runtime, inbox, len(expected)))

    docs = await runtime.database.db.instances.find({}, {"source": 1}).to_list(None)
    assert {d["_id"] for d in docs} == expected
    names = {d["_id"]: d["source"]["name"] for d in docs}
    assert names[nested.sop_uid] == "x/y/z/nested.dcm"
    assert {names[spec.sop_uid] for _, spec in moved} == {
        f"moved-in/{path.name}" for path, _ in moved
    }
    study = await runtime.database.db.studies.find_one({"_id": moved[0][1].study_uid})
    assert study is not None
    assert (study["instance_count"], study["series_count"]) == (4, 2)


async def test_after_ingest_move_keeps_the_relative_path_under_done(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon
) -> None:
    settings = dataclasses.replace(settings, after_ingest="move")
    inbox = settings.inbox
    await start_daemon(settings)
    specs = {
        Path("one.dcm"): write_instance(inbox / "one.dcm"),
        Path("sub/dir/two.dcm"): write_instance(inbox / "sub" / "dir" / "two.dcm"),
    }
    originals = {rel: (inbox / rel).read_bytes() for rel in specs}

    await eventually(lambda: _empty_and_stored(runtime, inbox, 2))

    assert files_under(settings.done_dir) == sorted(specs)
    for rel, data in originals.items():
        assert (settings.done_dir / rel).read_bytes() == data
        assert await stored_content(runtime, specs[rel].sop_uid) == data
    assert files_under(settings.failed_dir) == []


async def test_rejected_files_go_to_failed_beside_their_reason(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon
) -> None:
    inbox = settings.inbox
    await start_daemon(settings)
    (inbox / "notes").mkdir(parents=True)
    (inbox / "notes" / "readme.dcm").write_text("this is not DICOM\n" * 20)
    write_without_study_uid(inbox / "bad" / "no-study.dcm")
    good = write_instance(inbox / "good.dcm")
    originals = {
        "notes/readme.dcm": (inbox / "notes" / "readme.dcm").read_bytes(),
        "bad/no-study.dcm": (inbox / "bad" / "no-study.dcm").read_bytes(),
    }

    failed = settings.failed_dir
    expected_failed = sorted(Path(p) for name in originals for p in (name, name + ".reason.txt"))
    await eventually(lambda: _settled(runtime, inbox, failed, expected_failed))

    for name, data in originals.items():
        assert (failed / name).read_bytes() == data  # moved unchanged, same relative path
    assert (failed / "notes" / "readme.dcm.reason.txt").read_text() == NOT_DICOM_REASON + "\n"
    assert (failed / "bad" / "no-study.dcm.reason.txt").read_text() == (
        "StudyInstanceUID is missing or empty\n"
    )
    assert await count(runtime, "instances") == 1
    assert await runtime.database.db.instances.find_one({"_id": good.sop_uid}) is not None
    assert await count(runtime, "uploads") == 0
    assert await count(runtime, "fs.files") == 1


async def _settled(runtime: Runtime, inbox: Path, failed: Path, expected: list[Path]) -> bool:
    return not files_under(inbox) and files_under(failed) == expected


async def test_symlinks_are_refused_and_their_targets_left_alone(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    inbox = settings.inbox
    outside = tmp_path / "outside"
    target = outside / "real.dcm"
    write_instance(target)
    write_instance(outside / "folder" / "inner.dcm")
    before = {p: p.read_bytes() for p in outside.rglob("*.dcm")}
    inbox.mkdir(parents=True)
    (inbox / "early-link.dcm").symlink_to(target)  # there at start-up: found by the scan
    (inbox / "early-dir-link").symlink_to(outside / "folder", target_is_directory=True)

    await start_daemon(settings)
    (inbox / "nested").mkdir()
    (inbox / "nested" / "late-link.dcm").symlink_to(target)  # appears while watching
    (inbox / "late-dir-link").symlink_to(outside / "folder", target_is_directory=True)

    names = ["early-link.dcm", "early-dir-link", "nested/late-link.dcm", "late-dir-link"]
    failed = settings.failed_dir
    expected = sorted(Path(p) for n in names for p in (n, n + ".reason.txt"))
    await eventually(lambda: _settled(runtime, inbox, failed, expected))

    for name in names:
        assert (failed / name).is_symlink(), "the link itself is moved, not its target"
        reason = (failed / f"{name}.reason.txt").read_text()
        assert reason == "symbolic links are refused: copy the file into the watched folder\n"
    assert {p: p.read_bytes() for p in outside.rglob("*.dcm")} == before
    assert await count(runtime, "instances") == 0


async def test_dotfiles_and_dot_folders_are_ignored_until_renamed(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon
) -> None:
    inbox = settings.inbox
    hidden = write_instance(inbox / ".upload.dcm.part")
    write_instance(inbox / ".rsync-partial" / "x.dcm")
    await start_daemon(settings)
    write_instance(inbox / ".late.dcm")
    control = write_instance(inbox / "visible.dcm")

    await eventually(lambda: _stored(runtime, {control.sop_uid}))
    await asyncio.sleep(settings.file_settle_seconds * 3)  # time enough to have picked them up
    assert files_under(inbox) == sorted(
        Path(p) for p in (".upload.dcm.part", ".rsync-partial/x.dcm", ".late.dcm")
    )
    assert await count(runtime, "instances") == 1

    os.rename(inbox / ".upload.dcm.part", inbox / "upload.dcm")  # how uploaders finish
    await eventually(lambda: _stored(runtime, {control.sop_uid, hidden.sop_uid}))
    remaining = sorted(Path(p) for p in (".rsync-partial/x.dcm", ".late.dcm"))
    await eventually(lambda: _inbox_is(inbox, remaining))


async def _inbox_is(inbox: Path, expected: list[Path]) -> bool:
    return files_under(inbox) == expected


async def _stored(runtime: Runtime, sop_uids: set[str]) -> bool:
    ids = await runtime.database.db.instances.distinct("_id")
    return set(ids) == sop_uids


# ---- settling ---------------------------------------------------------------------------
async def test_a_slowly_written_file_is_ingested_only_once_complete(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    inbox = settings.inbox
    spec = write_instance(tmp_path / "big.dcm", rows=256, columns=256, frames=2)
    data = (tmp_path / "big.dcm").read_bytes()
    await start_daemon(settings)

    chunks = [data[i : i + 8192] for i in range(0, len(data), 8192)]
    pause = settings.file_settle_seconds / 3  # size changes well within every settle window
    started = time.monotonic()
    with (inbox / "slow.dcm").open("wb") as fp:
        for chunk in chunks:
            fp.write(chunk)
            fp.flush()
            await asyncio.sleep(pause)
            assert await count(runtime, "instances") == 0, "ingested before it was complete"
            assert (inbox / "slow.dcm").exists(), "taken away while being written"
    writing = time.monotonic() - started
    assert writing > 5 * settings.file_settle_seconds  # the test really was slow

    await eventually(lambda: _stored(runtime, {spec.sop_uid}))
    doc = await runtime.database.db.instances.find_one({"_id": spec.sop_uid})
    assert doc is not None
    content = await stored_content(runtime, spec.sop_uid)
    assert sha256(content) == sha256(data) == doc["sha256"]
    assert doc["size"] == len(data)
    assert files_under(settings.failed_dir) == []
    await eventually(lambda: _inbox_empty(inbox))


async def _inbox_empty(inbox: Path) -> bool:
    return await _inbox_is(inbox, [])


async def test_a_file_created_then_reopened_for_writing_is_waited_for(tmp_path: Path) -> None:
    """The close-write fast path must not outlive a writer that opens the file again
    (create, close, reopen, write slowly): the full settle time applies until it closes."""
    root = tmp_path / "inbox"
    root.mkdir()
    submitted: list[tuple[float, Path]] = []
    source = FolderSource(
        root,
        submit=lambda p: submitted.append((time.monotonic(), p)),
        refuse=lambda p, r: pytest.fail(f"refused {p}: {r}"),
        settle_seconds=1.0,
    )
    await source.start()
    try:
        path = root / "reopened.bin"
        path.touch()  # open + close: IN_CLOSE_WRITE
        with path.open("ab") as fp:
            for _ in range(8):
                fp.write(b"x" * 1000)
                fp.flush()
                await asyncio.sleep(0.3)  # > the 0.1s fast path + a check, < settle
                assert submitted == [], "submitted while the writer was still writing"
        closed_at = time.monotonic()

        async def submitted_once() -> bool:
            return bool(submitted)

        await eventually(submitted_once, within=10)
        assert [p for _, p in submitted] == [path]
        assert submitted[0][0] - closed_at < 0.9, "after close, the fast path applies"
        assert path.stat().st_size == 8000
    finally:
        await source.stop()


# ---- volume -----------------------------------------------------------------------------
BURST_FILES = 2000
BURST_STUDIES = 5
SERIES_PER_STUDY = 2


def _burst_template() -> Dataset:
    """A small valid instance: file meta, the four UIDs and a few searchable keys."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.PatientID = "BURST"
    ds.Modality = "CT"
    ds.StudyDate = "20240101"
    return ds


def write_burst(folder: Path) -> tuple[Counter[str], Counter[str], dict[str, set[str]]]:
    """Write BURST_FILES instances (one dataset, new UIDs each time); returns the expected
    instances per study and per series, and the series of each study."""
    ds = _burst_template()
    studies = [generate_uid() for _ in range(BURST_STUDIES)]
    series = {s: [generate_uid() for _ in range(SERIES_PER_STUDY)] for s in studies}
    per_study: Counter[str] = Counter()
    per_series: Counter[str] = Counter()
    staging = folder / "staging"
    staging.mkdir(parents=True)
    for i in range(BURST_FILES):
        study = studies[i % BURST_STUDIES]
        serie = series[study][(i // BURST_STUDIES) % SERIES_PER_STUDY]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, serie
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber = series[study].index(serie) + 1
        ds.InstanceNumber = i + 1
        ds.save_as(staging / f"{i:05d}.dcm", enforce_file_format=True)
        per_study[study] += 1
        per_series[serie] += 1
    return per_study, per_series, {s: set(v) for s, v in series.items()}


@pytest.mark.timeout(900)
async def test_a_burst_of_2000_files_is_counted_exactly(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    inbox = settings.inbox
    started = time.perf_counter()
    per_study, per_series, series_of = await asyncio.to_thread(write_burst, tmp_path)
    generated = time.perf_counter() - started
    await start_daemon(settings)

    started = time.perf_counter()
    for path in sorted((tmp_path / "staging").iterdir()):  # dropped in as fast as we can
        os.rename(path, inbox / path.name)
    await eventually(lambda: _empty_and_stored(runtime, inbox, BURST_FILES), within=840)
    elapsed = time.perf_counter() - started
    print(
        f"\nburst: {BURST_FILES} files generated in {generated:.1f}s, ingested in "
        f"{elapsed:.1f}s = {BURST_FILES / elapsed:.1f} instances/s"
    )

    db = runtime.database.db
    assert await count(runtime, "instances") == BURST_FILES
    assert await count(runtime, "instances", {"rollup_pending": True}) == 0
    assert await count(runtime, "uploads") == 0
    assert await count(runtime, "fs.files") == BURST_FILES
    studies = {d["_id"]: d for d in await db.studies.find().to_list(None)}
    assert {k: v["instance_count"] for k, v in studies.items()} == dict(per_study)
    assert {k: v["series_count"] for k, v in studies.items()} == {
        k: len(v) for k, v in series_of.items()
    }
    series = await db.series.find().to_list(None)
    assert {d["_id"]: d["instance_count"] for d in series} == dict(per_series)
    assert files_under(inbox) == []
    assert files_under(settings.failed_dir) == []


# ---- outages and stopping ---------------------------------------------------------------
async def test_files_wait_in_the_inbox_while_the_database_is_down(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, ferretdb: FerretServer
) -> None:
    inbox = settings.inbox
    daemon = await start_daemon(settings)
    first = write_instance(inbox / "first.dcm")
    await eventually(lambda: _stored(runtime, {first.sop_uid}))
    await eventually(lambda: _inbox_empty(inbox))  # its ingest is over

    ferretdb.stop()
    try:
        specs = {f"during/{i}.dcm": write_instance(inbox / "during" / f"{i}.dcm") for i in range(4)}
        originals = {name: (inbox / name).read_bytes() for name in specs}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # through several retries (each waits 5s)
            await asyncio.sleep(0.5)
            assert {str(p) for p in files_under(inbox)} == set(specs), "file lost"
        assert daemon.runner.queued == {inbox.resolve() / name for name in specs}
        assert files_under(settings.failed_dir) == []
    finally:
        ferretdb.start()

    expected = {first.sop_uid, *(spec.sop_uid for spec in specs.values())}
    await eventually(lambda: _stored(runtime, expected), within=90)
    await eventually(lambda: _inbox_empty(inbox))
    for name, spec in specs.items():
        assert await stored_content(runtime, spec.sop_uid) == originals[name]
    assert await count(runtime, "uploads") == 0
    studies = await runtime.database.db.studies.find().to_list(None)
    study_counts = {d["_id"]: d["instance_count"] for d in studies}
    assert study_counts == {spec.study_uid: 1 for spec in [first, *specs.values()]}


async def test_stop_finishes_in_flight_work_and_leaves_the_rest(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    settings = dataclasses.replace(settings, ingest_concurrency=2)
    inbox = settings.inbox
    staging = tmp_path / "staging"
    specs = {f"{i:03d}.dcm": write_instance(staging / f"{i:03d}.dcm") for i in range(80)}
    daemon = await start_daemon(settings)
    for name in specs:
        os.rename(staging / name, inbox / name)
    await eventually(lambda: _at_least(runtime, 1))

    started = time.monotonic()
    await daemon.stop()
    assert time.monotonic() - started < settings.drain_seconds
    stored = set(await runtime.database.db.instances.distinct("_id"))
    left = {specs[str(p)].sop_uid for p in files_under(inbox)}
    assert stored.isdisjoint(left), "stored, yet still in the inbox"
    assert stored | left == {s.sop_uid for s in specs.values()}, "a file was lost"
    assert left, "stop went on with queued work instead of leaving it"
    assert await count(runtime, "instances", {"rollup_pending": True}) == 0, "half-done"
    assert await count(runtime, "uploads") == 0
    await asyncio.sleep(1)
    assert set(await runtime.database.db.instances.distinct("_id")) == stored, "still working"

    await start_daemon(settings)  # the next start picks up what was left
    await eventually(lambda: _empty_and_stored(runtime, inbox, len(specs)), within=120)


async def _at_least(runtime: Runtime, n: int) -> bool:
    return await count(runtime, "instances") >= n


async def test_stop_cancels_work_stuck_past_the_drain_time_and_keeps_the_file(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, ferretdb: FerretServer
) -> None:
    settings = dataclasses.replace(settings, drain_seconds=0.5)
    inbox = settings.inbox
    daemon = await start_daemon(settings)
    ferretdb.stop()
    try:
        spec = write_instance(inbox / "stuck.dcm")
        data = (inbox / "stuck.dcm").read_bytes()
        path = inbox.resolve() / "stuck.dcm"

        async def in_flight() -> bool:
            return path in daemon.runner.queued and daemon.runner.queue.empty()

        await eventually(in_flight)
        started = time.monotonic()
        await daemon.stop()  # the ingest waits for the database: cancelled after 0.5s
        assert time.monotonic() - started < 3
        assert (inbox / "stuck.dcm").read_bytes() == data
        assert files_under(settings.failed_dir) == []
    finally:
        ferretdb.start()

    await start_daemon(settings)
    await eventually(lambda: _stored(runtime, {spec.sop_uid}), within=60)
    await eventually(lambda: _inbox_empty(inbox))
    assert await stored_content(runtime, spec.sop_uid) == data


async def test_a_file_removed_before_ingest_is_simply_forgotten(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon
) -> None:
    settings = dataclasses.replace(settings, file_settle_seconds=1.0)
    inbox = settings.inbox
    await start_daemon(settings)
    write_instance(inbox / "gone.dcm")
    await asyncio.sleep(0.3)
    (inbox / "gone.dcm").unlink()  # before it settled
    keep = write_instance(inbox / "keep.dcm")
    await eventually(lambda: _stored(runtime, {keep.sop_uid}))
    await eventually(lambda: _inbox_empty(inbox))
    assert files_under(settings.failed_dir) == []


async def test_files_of_the_watched_folder_go_to_its_project(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon
) -> None:
    settings = dataclasses.replace(settings, folder_project="lab")
    spec = write_instance(settings.inbox / "a.dcm")
    await start_daemon(settings)
    await eventually(lambda: _empty_and_stored(runtime, settings.inbox, 1))
    doc = await runtime.database.db.instances.find_one({"_id": spec.sop_uid})
    study = await runtime.database.db.studies.find_one({"_id": spec.study_uid})
    assert doc is not None and doc["project"] == "lab"
    assert study is not None and study["project"] == "lab"


@pytest.mark.parametrize("policy", ["keep-first", "overwrite"])
async def test_the_watched_folder_refuses_what_another_project_holds(
    runtime: Runtime, settings: Settings, start_daemon: StartDaemon, policy: str
) -> None:
    """A file of a study another project holds, and a file reusing another project's SOP
    Instance UID in a new study, go to failed/ with their reasons; the other project's
    instance is neither replaced nor moved, whatever the conflict policy."""
    runtime.ingestor.conflict_policy = policy
    settings = dataclasses.replace(settings, folder_project="beta")
    alpha = write_instance(settings.home / "alpha.dcm")
    alpha_bytes = (settings.home / "alpha.dcm").read_bytes()
    result = await runtime.ingestor.ingest(
        settings.home / "alpha.dcm", Source("t", project="alpha")
    )
    assert result.outcome is Outcome.STORED
    same_study = write_instance(settings.inbox / "same-study.dcm", study_uid=alpha.study_uid)
    same_uid = write_instance(settings.inbox / "same-uid.dcm", sop_uid=alpha.sop_uid)

    await start_daemon(settings)
    failed = settings.failed_dir
    expected = sorted(
        Path(p) for name in ("same-study.dcm", "same-uid.dcm") for p in (name, name + ".reason.txt")
    )
    await eventually(lambda: _settled(runtime, settings.inbox, failed, expected))

    reason = (failed / "same-study.dcm.reason.txt").read_text()
    assert reason.startswith(f"another project holds study {alpha.study_uid}")
    assert (failed / "same-uid.dcm.reason.txt").read_text() == UID_IN_USE + "\n"
    doc = await runtime.database.db.instances.find_one({"_id": alpha.sop_uid})
    assert doc is not None and (doc["project"], doc["study"]) == ("alpha", alpha.study_uid)
    assert await stored_content(runtime, alpha.sop_uid) == alpha_bytes
    assert await runtime.database.db.instances.find_one({"_id": same_study.sop_uid}) is None
    assert await runtime.database.db.studies.find_one({"_id": same_uid.study_uid}) is None
    assert await count(runtime, "study_projects") == 1
    assert (await count(runtime, "instances"), await count(runtime, "fs.files")) == (1, 1)
    assert await count(runtime, "uploads") == 0
