"""Group commit (storage.group_commit): the batching logic with a fake apply, then
concurrent ingests of one study, whose rollups it batches, against a real FerretDB."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloudpacs.errors import Unavailable
from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from cloudpacs.storage.group_commit import GroupCommit
from tests.factory import Spec, write_instance


class FakeApply:
    """Records each batch; holds every apply until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.running: set[str] = set()
        self.overlapped = False
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, study: str, docs: list[dict[str, Any]]) -> None:
        self.overlapped |= study in self.running
        self.running.add(study)
        try:
            await self.release.wait()
            self.batches.append((study, [doc["_id"] for doc in docs]))
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.running.discard(study)


async def test_instances_arriving_during_an_update_form_the_next_batch() -> None:
    apply = FakeApply()
    batches = GroupCommit(apply)
    first = asyncio.create_task(batches.add("s1", {"_id": "a"}))
    await asyncio.sleep(0.01)  # "a" alone is being applied ...
    rest = [asyncio.create_task(batches.add("s1", {"_id": sop})) for sop in "bcde"]
    other = asyncio.create_task(batches.add("s2", {"_id": "x"}))
    await asyncio.sleep(0.01)  # ... while b-e wait, as one batch; s2 runs beside
    assert apply.running == {"s1", "s2"}
    apply.release.set()
    await asyncio.gather(first, *rest, other)
    assert sorted(apply.batches) == [("s1", ["a"]), ("s1", ["b", "c", "d", "e"]), ("s2", ["x"])]
    assert [task.result() for task in rest] == [(None, 0), (None, 1), (None, 2), (None, 3)]
    assert not apply.overlapped


async def test_a_failed_batch_fails_each_of_its_members_and_not_the_next() -> None:
    apply = FakeApply()
    apply.fail_with = Unavailable("database down")
    batches = GroupCommit(apply)
    members = [asyncio.create_task(batches.add("s1", {"_id": sop})) for sop in "abc"]
    await asyncio.sleep(0.01)
    apply.release.set()
    results = await asyncio.gather(*members, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    apply.fail_with = None
    await batches.add("s1", {"_id": "d"})
    assert apply.batches[-1] == ("s1", ["d"])


async def test_a_cancelled_member_does_not_stop_its_batch() -> None:
    apply = FakeApply()
    batches = GroupCommit(apply)
    leaver = asyncio.create_task(batches.add("s1", {"_id": "a"}))
    stayer = asyncio.create_task(batches.add("s1", {"_id": "b"}))
    await asyncio.sleep(0.01)
    leaver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaver
    apply.release.set()
    await stayer
    assert apply.batches == [("s1", ["a", "b"])]


# ---- against FerretDB ---------------------------------------------------------------------
@pytest.fixture
async def counted_locks(runtime: Runtime) -> AsyncIterator[list[str]]:
    """The names of the rollup locks taken, in order."""
    taken: list[str] = []
    hold = runtime.store.locks.hold

    @contextlib.asynccontextmanager
    async def counting(name: str) -> AsyncIterator[None]:
        taken.append(name)
        async with hold(name):
            yield

    runtime.store.locks.hold = counting  # type: ignore[method-assign]
    yield taken


async def test_concurrent_ingests_of_one_study_count_exactly_in_few_updates(
    runtime: Runtime, counted_locks: list[str], tmp_path: Path
) -> None:
    study = Spec()
    series = [Spec().series_uid for _ in range(3)]
    paths, modalities = [], ["CT", "MR", "PT"]
    for i in range(40):
        path = tmp_path / f"{i}.dcm"
        write_instance(
            path, study_uid=study.study_uid, series_uid=series[i % 3], modality=modalities[i % 3]
        )
        paths.append(path)
    results = await asyncio.gather(
        *(runtime.ingestor.ingest(path, Source("test")) for path in paths)
    )
    assert {r.outcome for r in results} == {Outcome.STORED}

    db = runtime.database.db
    doc = await db.studies.find_one({"_id": study.study_uid})
    assert doc is not None
    assert (doc["instance_count"], doc["series_count"]) == (40, 3)
    assert sorted(doc["series_uids"]) == sorted(series)
    assert sorted(doc["modalities"]) == modalities
    for i, series_uid in enumerate(series):
        rollup = await db.series.find_one({"_id": series_uid})
        members = await db.series_members.find_one({"_id": series_uid})
        assert rollup is not None and members is not None
        expected = {r.sop_uid for r in results[i::3]}
        assert rollup["instance_count"] == len(expected)
        assert set(members["instances"]) == expected
    assert await db.uploads.count_documents({}) == 0  # every journal entry settled
    rollup_locks = [name for name in counted_locks if name != "study-index"]
    assert 1 <= len(rollup_locks) < 40  # batched: fewer lock rounds than instances
    assert set(rollup_locks) == {f"rollup:{study.study_uid}"}
    # the study index is entered when the study is new and when it gains a modality
    assert 1 <= counted_locks.count("study-index") <= 3
