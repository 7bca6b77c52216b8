"""IngestRunner and FileDisposal with a real ingestor and FerretDB: outcomes and what happens
to each file, bounded concurrency, robustness to file-system and internal errors, drain."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cloudpacs.daemon.runner import FileDisposal, IngestRunner
from cloudpacs.ingest import IngestResult, Outcome
from cloudpacs.runtime import Runtime
from tests.factory import write_instance

Done = list[tuple[Path, IngestResult]]
MakeRunner = Callable[..., Awaitable[tuple[IngestRunner, Done]]]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
async def make_runner(runtime: Runtime, tmp_path: Path) -> AsyncIterator[MakeRunner]:
    """Started runners that record each finished file; all drained at the end."""
    runners: list[IngestRunner] = []

    async def make(
        concurrency: int = 2, done_dir: Path | None = None, failed_dir: Path | None = None
    ) -> tuple[IngestRunner, Done]:
        finished: Done = []
        disposal = FileDisposal(
            root=tmp_path / "inbox",
            failed_dir=failed_dir or tmp_path / "failed",
            done_dir=done_dir,
        )
        runner = IngestRunner(
            runtime.ingestor, disposal, concurrency, on_done=lambda p, r: finished.append((p, r))
        )
        runner.start()
        runners.append(runner)
        return runner, finished

    yield make
    for runner in runners:
        await runner.drain(5)


async def run_all(runner: IngestRunner, paths: list[Path]) -> None:
    for path in paths:
        runner.submit(path)
    await asyncio.wait_for(runner.wait_idle(), 60)


def outcomes(finished: Done) -> dict[str, Outcome]:
    return {path.name: result.outcome for path, result in finished}


async def test_each_outcome_and_what_becomes_of_the_file(
    runtime: Runtime, make_runner: MakeRunner, inbox: Path, tmp_path: Path
) -> None:
    runner, finished = await make_runner(done_dir=tmp_path / "done")
    spec = write_instance(inbox / "a.dcm")
    shutil.copy(inbox / "a.dcm", tmp_path / "copy.dcm")
    (inbox / "junk.txt").write_bytes(b"\0" * 300)

    await run_all(runner, [inbox / "a.dcm", inbox / "junk.txt"])
    (tmp_path / "copy.dcm").rename(inbox / "a.dcm")  # the same file arrives again
    await run_all(runner, [inbox / "a.dcm"])

    assert len(finished) == 3
    assert sorted((p.name, r.outcome) for p, r in finished[:2]) == [
        ("a.dcm", Outcome.STORED),
        ("junk.txt", Outcome.REJECTED),
    ]
    assert finished[2][1].outcome is Outcome.DUPLICATE
    assert finished[-1][1].sop_uid == spec.sop_uid
    assert os.listdir(inbox) == []
    # a duplicate goes to done/ too, beside the first without overwriting it
    done = sorted(p.name for p in (tmp_path / "done").iterdir())
    assert len(done) == 2 and done[0] == "a.dcm" and done[1].startswith("a.dcm.")
    assert (tmp_path / "failed" / "junk.txt").exists()
    assert (
        (tmp_path / "failed" / "junk.txt.reason.txt")
        .read_text()
        .startswith("not a DICOM Part 10 file")
    )
    assert await runtime.database.db.instances.count_documents({}) == 1


async def test_failed_keeps_an_earlier_failure_of_the_same_name(
    make_runner: MakeRunner, inbox: Path, tmp_path: Path
) -> None:
    runner, finished = await make_runner()
    for content in (b"first", b"second"):
        (inbox / "x.dcm").write_bytes(content * 100)
        await run_all(runner, [inbox / "x.dcm"])
    failed = tmp_path / "failed"
    contents = {p.read_bytes()[:6] for p in failed.iterdir() if not p.name.endswith(".txt")}
    assert contents == {b"firstf", b"second"}
    assert len(list(failed.glob("*.reason.txt"))) == 2
    assert [r.outcome for _, r in finished] == [Outcome.REJECTED, Outcome.REJECTED]


async def test_a_file_system_error_does_not_kill_the_worker(
    runtime: Runtime, make_runner: MakeRunner, inbox: Path, tmp_path: Path
) -> None:
    """failed/ cannot be created (a file is in the way): the rejected file stays where it
    is, and the only worker goes on with the next file."""
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where failed/ should be")
    runner, finished = await make_runner(concurrency=1, failed_dir=blocker / "failed")
    (inbox / "junk.dcm").write_text("not DICOM")
    spec = write_instance(inbox / "good.dcm")

    await run_all(runner, [inbox / "junk.dcm", inbox / "good.dcm"])

    assert (inbox / "junk.dcm").read_text() == "not DICOM"  # left in place
    assert not (inbox / "good.dcm").exists()
    assert outcomes(finished) == {"good.dcm": Outcome.STORED}
    assert await runtime.database.db.instances.find_one({"_id": spec.sop_uid}) is not None
    assert all(not task.done() for task in runner._workers), "a worker died"


async def test_repeated_internal_errors_send_the_file_to_failed(
    make_runner: MakeRunner, inbox: Path, tmp_path: Path
) -> None:
    """Something the ingestor does not expect (here a folder instead of a file) is retried
    a few times, then moved aside with a reason, never lost or retried forever."""
    runner, finished = await make_runner(concurrency=1)
    odd = inbox / "odd.dcm"
    odd.mkdir()
    (odd / "inside").write_text("x")

    started = time.monotonic()
    await run_all(runner, [odd])

    assert time.monotonic() - started >= 1.5  # backed off 0.5s then 1s between attempts
    assert not odd.exists()
    assert (tmp_path / "failed" / "odd.dcm" / "inside").read_text() == "x"
    assert (tmp_path / "failed" / "odd.dcm.reason.txt").read_text() == (
        "internal error while ingesting; see the cloudpacs log\n"
    )
    assert finished == []


async def test_concurrency_is_bounded(
    runtime: Runtime, make_runner: MakeRunner, inbox: Path
) -> None:
    runner, finished = await make_runner(concurrency=3)
    paths = [inbox / f"{i}.dcm" for i in range(30)]
    for path in paths:
        write_instance(path)
    registry = runtime.metrics.registry
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            value = registry.get_sample_value("cloudpacs_ingests_in_flight", {"source": "folder"})
            peak = max(peak, int(value or 0))
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    await run_all(runner, paths)
    sampler.cancel()

    assert 2 <= peak <= 3
    assert len(finished) == 30
    assert {r.outcome for _, r in finished} == {Outcome.STORED}


async def test_submitting_twice_ingests_once(make_runner: MakeRunner, inbox: Path) -> None:
    runner, finished = await make_runner(concurrency=2)
    write_instance(inbox / "a.dcm")
    for _ in range(5):
        runner.submit(inbox / "a.dcm")
    await asyncio.wait_for(runner.wait_idle(), 30)
    assert outcomes(finished) == {"a.dcm": Outcome.STORED}
    assert len(finished) == 1


async def test_drain_when_idle_is_quick_and_later_submissions_are_ignored(
    make_runner: MakeRunner, inbox: Path
) -> None:
    runner, finished = await make_runner(concurrency=4)
    started = time.monotonic()
    await runner.drain(10)
    assert time.monotonic() - started < 1
    write_instance(inbox / "late.dcm")
    runner.submit(inbox / "late.dcm")
    await asyncio.sleep(0.5)
    assert runner.queue.empty()
    assert (inbox / "late.dcm").exists()
    assert finished == []
    assert all(task.done() for task in runner._workers)
