"""Study searches scan the slim `study_search` documents (one per study, only the search keys
and the project) and read the rollups of the page by `_id`; the documents follow ingest,
deletion and rebuilds, and older archives get them once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloudpacs.dicom.levels import Level
from cloudpacs.dicom.matching import parse_query
from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from cloudpacs.search import Scope, SearchService
from cloudpacs.storage import documents
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.schema import init_schema
from tests.factory import Spec, write_instance
from tests.storage.listening import listened_store

BASE = "http://archive/dicomweb"


async def store(runtime: Runtime, path: Path, **spec: Any) -> Spec:
    written = write_instance(path, **spec)
    result = await runtime.ingestor.ingest(path, Source("test"))
    assert result.outcome is Outcome.STORED, result.reason
    return written


async def search(store: InstanceStore, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    scope = Scope(projects=frozenset({"default"}))
    return await SearchService(store).search(Level.STUDY, parse_query(params), scope, BASE)


def uids(found: list[dict[str, Any]]) -> list[str]:
    return [item["0020000D"]["Value"][0] for item in found]


async def search_doc(runtime: Runtime, study_uid: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await runtime.database.db.study_search.find_one({"_id": study_uid})
    return doc


async def test_search_documents_follow_ingest_deletion_and_rebuild(
    runtime: Runtime, tmp_path: Path
) -> None:
    db = runtime.database.db
    ct = await store(runtime, tmp_path / "ct.dcm", patient_name="Smith^Ann", modality="CT")
    study = ct.study_uid
    expected = {
        "_id": study,
        "project": "default",
        "patient_id": "P0001",
        "patient_name": ["SMITH^ANN"],  # its component groups
        "accession": "ACC0001",
        "modalities": ["CT"],
    }
    found = await search_doc(runtime, study)
    assert found is not None
    assert {key: found[key] for key in expected} == expected
    assert found["study_date"] is not None and set(found) == {"_id", *documents.SEARCH_KEYS}

    mr = await store(
        runtime, tmp_path / "mr.dcm", study_uid=study, patient_name="Smith^Ann", modality="MR"
    )
    assert (await search_doc(runtime, study) or {})["modalities"] == ["CT", "MR"]

    await db.study_search.delete_one({"_id": study})
    await runtime.store.recompute_rollups(study)
    rebuilt = await search_doc(runtime, study)
    assert rebuilt is not None and rebuilt["modalities"] == ["CT", "MR"]
    assert {key: rebuilt[key] for key in expected if key != "modalities"} == {
        key: found[key] for key in expected if key != "modalities"
    }

    docs = await db.instances.find({"_id": {"$in": [ct.sop_uid, mr.sop_uid]}}).to_list(None)
    await runtime.store.remove_instances(docs)
    assert await search_doc(runtime, study) is None


async def test_study_searches_scan_the_search_documents_and_agree_with_the_rollups(
    runtime: Runtime, tmp_path: Path
) -> None:
    smith = await store(runtime, tmp_path / "a.dcm", patient_name="Smith^Ann", modality="MR")
    smyth = await store(runtime, tmp_path / "b.dcm", patient_name="Smyth^Bo", study_date="20250301")
    await store(runtime, tmp_path / "c.dcm", patient_name="Jones^Cy", study_date="20230101")
    cases = [  # matches the study index cannot look up (storage.study_index)
        [("PatientName", "*M?TH*")],
        [("StudyTime", "100000-120000")],
        [("ModalitiesInStudy", "M*")],
        [("PatientName", "*SM*"), ("ReferringPhysicianName", "REF*")],
    ]
    async with listened_store(runtime) as (slim, listener):
        answers = [await search(slim, params) for params in cases]
        assert {coll for coll, _ in listener.finds} <= {"checkpoints", "study_search", "studies"}
        scans = [f for coll, f in listener.finds if coll == "study_search"]
        assert len(scans) == len(cases)
        assert all(list(f) == ["_id"] for coll, f in listener.finds if coll == "studies")

        await runtime.database.db.checkpoints.delete_one({"_id": "index:study_search"})
        async with listened_store(runtime) as (old, old_listener):
            fallback = [await search(old, params) for params in cases]  # the rollups, scanned
            assert "study_search" not in {coll for coll, _ in old_listener.finds}
    assert answers == fallback
    assert uids(answers[0]) == sorted([smith.study_uid, smyth.study_uid])
    assert len(uids(answers[1])) == 3
    assert uids(answers[2]) == [smith.study_uid]
    assert uids(answers[3]) == sorted([smith.study_uid, smyth.study_uid])

    # a study attribute the search documents do not carry: the rollups answer
    async with listened_store(runtime) as (slim, listener):
        assert len(await search(slim, [("StudyDescription", "Synthetic*")])) == 3
        assert "study_search" not in {coll for coll, _ in listener.finds}


async def test_archives_from_before_the_search_documents_get_them_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    db = runtime.database.db
    old = await store(runtime, tmp_path / "a.dcm", patient_name="Old^One")
    await db.study_search.delete_many({})
    await db.checkpoints.delete_one({"_id": "index:study_search"})

    notes = await init_schema(runtime.database)

    assert "study search keys copied for 1 studies" in notes
    rollup = await db.studies.find_one({"_id": old.study_uid})
    assert await search_doc(runtime, old.study_uid) == {
        "_id": old.study_uid,
        **documents.study_search(rollup or {}),
    }
    assert "study search keys" not in " ".join(await init_schema(runtime.database))
    async with listened_store(runtime) as (slim, _):
        assert uids(await search(slim, [("PatientName", "*LD*")])) == [old.study_uid]
