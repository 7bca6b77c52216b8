"""Projects at ingest, against a real FerretDB, through the import path (`cloudpacs import`):
a SOP Instance UID held by another project or another study is never overwritten, moved or
described, under either conflict policy; a study is in exactly one project, even when two
projects race for it; and a refusal leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from cloudpacs.importer import import_paths
from cloudpacs.ingest import UID_IN_USE, Outcome, Source
from cloudpacs.runtime import Runtime
from tests.factory import Spec, write_instance
from tests.test_ingest import consistency, stored_bytes

POLICIES = pytest.mark.parametrize("policy", ["keep-first", "overwrite"])


async def store_in(runtime: Runtime, path: Path, spec: Spec, project: str) -> Spec:
    write_instance(path, spec)
    result = await runtime.ingestor.ingest(path, Source("test", project=project))
    assert result.outcome is Outcome.STORED, result.reason
    return spec


async def held(runtime: Runtime, spec: Spec) -> dict[str, Any]:
    """What the archive holds of one instance and its study: document, bytes, rollups."""
    db = runtime.database.db
    doc = await db.instances.find_one({"_id": spec.sop_uid}, {"ingested_at": 0})
    assert doc is not None
    return {
        "doc": doc,
        "bytes": await stored_bytes(runtime, spec.sop_uid),
        "study": await db.studies.find_one({"_id": spec.study_uid}, {"updated_at": 0}),
        "claim": await db.study_projects.find_one({"_id": spec.study_uid}),
    }


async def nothing_of(runtime: Runtime, spec: Spec) -> bool:
    """No trace of a refused instance's new study and series."""
    db = runtime.database.db
    return (
        await db.studies.find_one({"_id": spec.study_uid}) is None
        and await db.study_projects.find_one({"_id": spec.study_uid}) is None
        and await db.series.find_one({"_id": spec.series_uid}) is None
    )


async def import_one(runtime: Runtime, path: Path, spec: Spec, project: str) -> str:
    """`cloudpacs import` of one file into `project`; the reason it was rejected."""
    write_instance(path, spec)
    summary = await import_paths(runtime.ingestor, [path], 1, progress=False, project=project)
    assert summary.counts == Counter(rejected=1), summary.render()
    [(_, reason)] = summary.rejected
    return reason


@POLICIES
async def test_an_instance_uid_of_another_project_is_refused_and_not_revealed(
    runtime: Runtime, tmp_path: Path, policy: str
) -> None:
    runtime.ingestor.conflict_policy = policy
    alpha = await store_in(runtime, tmp_path / "alpha.dcm", Spec(patient_id="ALPHA-1"), "alpha")
    before = await held(runtime, alpha)
    # beta's file: a new study of beta's, carrying alpha's SOP Instance UID
    intruder = Spec(patient_id="BETA-1", sop_uid=alpha.sop_uid)
    reason = await import_one(runtime, tmp_path / "in" / "intruder.dcm", intruder, "beta")

    assert reason == UID_IN_USE
    assert before["doc"]["sha256"][:8] not in reason and "alpha" not in reason
    assert await held(runtime, alpha) == before  # not replaced, not moved into beta
    assert await nothing_of(runtime, intruder)
    assert await consistency(runtime) == {"instances": 1, "files": 1}
    await runtime.audit.flush()
    records = await runtime.database.db.audit.find({"instance": alpha.sop_uid}).to_list(None)
    assert [(r["outcome"], r["project"], r["study"], r["detail"]) for r in records[1:]] == [
        ("rejected", "beta", intruder.study_uid, UID_IN_USE)
    ]
    rejection = await runtime.database.db.rejections.find_one({"sop_uid": alpha.sop_uid})
    assert rejection is not None and rejection["reason_code"] == "uid-in-use"


@POLICIES
async def test_an_instance_uid_of_another_study_is_refused_even_in_the_same_project(
    runtime: Runtime, tmp_path: Path, policy: str
) -> None:
    """The sender learns the same whether the UID is in another study of its own project
    or in another project: it cannot tell them apart."""
    runtime.ingestor.conflict_policy = policy
    first = await store_in(runtime, tmp_path / "a.dcm", Spec(), "alpha")
    before = await held(runtime, first)
    moved = Spec(sop_uid=first.sop_uid, patient_name="Moved^Here")
    reason = await import_one(runtime, tmp_path / "in" / "moved.dcm", moved, "alpha")
    assert reason == UID_IN_USE
    assert await held(runtime, first) == before
    assert await nothing_of(runtime, moved)
    assert await consistency(runtime) == {"instances": 1, "files": 1}


async def test_the_same_study_of_the_same_project_still_follows_the_policy(
    runtime: Runtime, tmp_path: Path
) -> None:
    first = await store_in(runtime, tmp_path / "a.dcm", Spec(), "alpha")
    changed = Spec(
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        sop_uid=first.sop_uid,
        patient_name="Changed^Name",
    )
    reason = await import_one(runtime, tmp_path / "in" / "b.dcm", changed, "alpha")
    assert "already stored with different content" in reason  # keep-first
    runtime.ingestor.conflict_policy = "overwrite"
    summary = await import_paths(
        runtime.ingestor, [tmp_path / "in" / "b.dcm"], 1, progress=False, project="alpha"
    )
    assert summary.counts == Counter(stored=1)
    assert await stored_bytes(runtime, first.sop_uid) == (tmp_path / "in" / "b.dcm").read_bytes()


async def test_import_refuses_a_study_of_another_project(runtime: Runtime, tmp_path: Path) -> None:
    alpha = await store_in(runtime, tmp_path / "a.dcm", Spec(), "alpha")
    before = await held(runtime, alpha)
    other = Spec(study_uid=alpha.study_uid)  # a new instance of alpha's study
    reason = await import_one(runtime, tmp_path / "in" / "b.dcm", other, "beta")
    assert "another project holds study" in reason
    assert await runtime.database.db.instances.find_one({"_id": other.sop_uid}) is None
    assert await held(runtime, alpha) == before
    assert await consistency(runtime) == {"instances": 1, "files": 1}


async def test_two_projects_racing_for_one_new_study_one_wins_the_other_is_refused(
    runtime: Runtime, tmp_path: Path
) -> None:
    db = runtime.database.db
    for round_ in range(4):
        study, series = generate_uid(), (generate_uid(), generate_uid())
        jobs = []
        for n in range(12):
            project = ("alpha", "beta")[n % 2]
            path = tmp_path / str(round_) / f"{n}.dcm"
            write_instance(path, Spec(study_uid=study, series_uid=series[n % 2]))
            jobs.append((path, project))
        results = await asyncio.gather(
            *(runtime.ingestor.ingest(p, Source("import", project=project)) for p, project in jobs)
        )
        claim = await db.study_projects.find_one({"_id": study})
        assert claim is not None, [(r.outcome, r.reason) for r in results]
        winner = claim["project"]
        for (_, project), result in zip(jobs, results, strict=True):
            if project == winner:
                assert result.outcome is Outcome.STORED, result.reason
            else:
                assert (result.outcome, result.reason_code) == (Outcome.REJECTED, "wrong-project")
        assert set(await db.instances.distinct("project", {"study": study})) == {winner}
        rollup = await db.studies.find_one({"_id": study})
        assert rollup is not None and rollup["project"] == winner
        assert (rollup["instance_count"], rollup["series_count"]) == (6, 1)
    counts = await consistency(runtime)  # no file, journal entry or flag of the losers left
    assert counts == {"instances": 24, "files": 24}
