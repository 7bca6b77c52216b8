"""Read documents (`instance_reads`: what WADO-RS and listings need of an instance, with its
DICOM JSON as one string) follow ingest, overwrite, deletion and rebuilds; reads use them,
and fall back to the instances where one is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloudpacs.ingest import Outcome, Source
from cloudpacs.retrieve import RetrieveService
from cloudpacs.runtime import Runtime
from cloudpacs.search import Scope
from cloudpacs.storage import documents
from cloudpacs.storage.sweep import sweep
from tests.factory import write_instance, write_oversized, write_study
from tests.storage.listening import listened_store

BASE = "http://archive/dicomweb"
SCOPE_ALL = frozenset({"default"})


async def _ingest(runtime: Runtime, path: Path) -> None:
    result = await runtime.ingestor.ingest(path, Source("test"))
    assert result.outcome is Outcome.STORED, result.reason


async def _reads_of(runtime: Runtime, study_uid: str) -> dict[str, dict[str, Any]]:
    docs = await runtime.database.db.instance_reads.find({"study": study_uid}).to_list(None)
    return {doc["_id"]: doc for doc in docs}


async def _expected_reads(runtime: Runtime, study_uid: str) -> dict[str, dict[str, Any]]:
    docs = await runtime.database.db.instances.find({"study": study_uid}).to_list(None)
    return {doc["_id"]: documents.instance_read(doc) for doc in docs}


async def _metadata(store: Any, study_uid: str) -> list[dict[str, Any]]:
    scope = Scope(study_uid, projects=SCOPE_ALL)
    text = "".join([piece async for piece in RetrieveService(store).metadata(scope, None, BASE)])
    found: list[dict[str, Any]] = json.loads(text)
    return found


async def test_read_documents_follow_ingest_overwrite_and_deletion(
    runtime: Runtime, tmp_path: Path
) -> None:
    written = write_study(tmp_path / "s", n_series=2, per_series=3)
    for path, _spec in written:
        await _ingest(runtime, path)
    study_uid = written[0][1].study_uid
    reads = await _reads_of(runtime, study_uid)
    assert reads == await _expected_reads(runtime, study_uid)
    assert len(reads) == 6
    one = next(iter(reads.values()))
    assert set(one) == {"_id", "meta_json", *documents.READ_FIELDS} - {"meta_file_id"}
    stored = await runtime.database.db.instances.find_one({"_id": one["_id"]})
    assert stored is not None and json.loads(one["meta_json"]) == stored["meta"]

    # overwritten with other bytes: the read document names the new file and metadata
    runtime.ingestor.conflict_policy = "overwrite"
    first = written[0][1]
    spec = {k: getattr(first, k) for k in ("study_uid", "series_uid", "sop_uid")}
    write_instance(tmp_path / "new.dcm", **spec, study_description="Rewritten")
    await _ingest(runtime, tmp_path / "new.dcm")
    reads = await _reads_of(runtime, study_uid)
    assert reads == await _expected_reads(runtime, study_uid)
    assert "Rewritten" in reads[first.sop_uid]["meta_json"]

    # deleted: gone with their instances
    gone = await runtime.database.db.instances.find({"series": first.series_uid}).to_list(None)
    await runtime.store.remove_instances(gone)
    reads = await _reads_of(runtime, study_uid)
    assert set(reads) == {s.sop_uid for _p, s in written if s.series_uid != first.series_uid}
    assert reads == await _expected_reads(runtime, study_uid)


async def test_reads_use_read_documents_only_and_fall_back_until_a_sweep_rebuilds(
    runtime: Runtime, tmp_path: Path
) -> None:
    written = write_study(tmp_path, n_series=2, per_series=2)
    for path, _spec in written:
        await _ingest(runtime, path)
    study_uid = written[0][1].study_uid
    async with listened_store(runtime) as (store, listener):
        expected = await _metadata(store, study_uid)
        assert len(expected) == 4
        assert "instances" not in {coll for coll, _ in listener.finds}
        assert all(list(query) == ["_id"] for _, query in listener.finds)

        # an archive from before read documents: the same answers, from the instances
        db = runtime.database.db
        await db.instance_reads.delete_many({})
        await db.studies.update_one({"_id": study_uid}, {"$unset": {"read_docs": 1}})
        listener.finds.clear()
        assert await _metadata(store, study_uid) == expected
        assert "instances" in {coll for coll, _ in listener.finds}

        # ... until a sweep rebuilds the study's
        assert (await sweep(runtime.store, grace_seconds=0)).studies_repaired == 1
        assert (await sweep(runtime.store, grace_seconds=0)).studies_repaired == 0
        assert await _reads_of(runtime, study_uid) == await _expected_reads(runtime, study_uid)
        listener.finds.clear()
        assert await _metadata(store, study_uid) == expected
        assert "instances" not in {coll for coll, _ in listener.finds}


async def test_an_oversized_instance_reads_its_full_metadata_from_its_file(
    runtime: Runtime, tmp_path: Path
) -> None:
    ds, big_values = write_oversized(tmp_path / "big.dcm")
    await _ingest(runtime, tmp_path / "big.dcm")
    read = await runtime.database.db.instance_reads.find_one({"_id": ds.SOPInstanceUID})
    assert read is not None and read.get("meta_file_id") is not None
    assert len(read["meta_json"]) < 100_000  # only the searchable core inline
    (full,) = await _metadata(runtime.store, ds.StudyInstanceUID)
    assert full["00131013"]["Value"] == [big_values[3]]
