"""The ingest use case against a real FerretDB: idempotence, conflicts, nothing partial."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from cloudpacs.config import Settings
from cloudpacs.dicom.parse import parse_file
from cloudpacs.errors import InvalidDicom, Unavailable
from cloudpacs.ingest import Outcome, Source
from cloudpacs.metrics import Metrics
from cloudpacs.runtime import Runtime, build_runtime
from cloudpacs.storage.database import open_database
from tests.conftest import free_port
from tests.factory import Spec, make_dataset, pydicom_test_files, write_instance, write_oversized

SOURCE = Source("test")


async def stored_bytes(runtime: Runtime, sop_uid: str) -> bytes:
    doc = await runtime.database.db.instances.find_one({"_id": sop_uid})
    assert doc is not None
    return b"".join([c async for c in runtime.store.stream_file(doc["file_id"])])


async def consistency(runtime: Runtime) -> dict[str, int]:
    """Counts, and proof that every GridFS file belongs to exactly one instance."""
    db = runtime.database.db
    instances = await db.instances.find({}, {"file_id": 1, "meta_file_id": 1}).to_list(None)
    referenced = {d["file_id"] for d in instances} | {
        d["meta_file_id"] for d in instances if d.get("meta_file_id")
    }
    files = {d["_id"] for d in await db["fs.files"].find({}, {"_id": 1}).to_list(None)}
    chunk_owners = set(await db["fs.chunks"].distinct("files_id"))
    assert files == referenced, "GridFS files not referenced by exactly the instances"
    assert chunk_owners <= files, "chunks without a file"
    assert await db.uploads.count_documents({}) == 0, "journal entries left behind"
    assert await db.instances.count_documents({"rollup_pending": True}) == 0
    return {"instances": len(instances), "files": len(files)}


async def test_every_pydicom_file(runtime: Runtime) -> None:
    outcomes: dict[str, list[Path]] = {o.value: [] for o in Outcome}
    first_by_sop: dict[str, Path] = {}
    for path in pydicom_test_files():
        result = await runtime.ingestor.ingest(path, SOURCE)
        outcomes[result.outcome.value].append(path)
        if result.outcome is Outcome.STORED:
            assert result.sop_uid is not None
            first_by_sop[result.sop_uid] = path
        elif result.outcome is Outcome.REJECTED:
            assert result.reason
    assert len(outcomes["stored"]) >= 100
    for sop_uid, path in first_by_sop.items():
        assert await stored_bytes(runtime, sop_uid) == path.read_bytes(), path.name
    # every file pydicom itself cannot use as Part 10 with UIDs is rejected, never stored
    for path in outcomes["rejected"]:
        try:
            parsed = parse_file(path)
        except InvalidDicom:
            continue
        assert parsed.sop_uid in first_by_sop  # a conflict with an earlier variant
    counts = await consistency(runtime)
    assert counts["instances"] == len(first_by_sop)


async def test_same_file_twice_is_a_duplicate(runtime: Runtime, tmp_path: Path) -> None:
    write_instance(tmp_path / "a.dcm")
    first = await runtime.ingestor.ingest(tmp_path / "a.dcm", SOURCE)
    second = await runtime.ingestor.ingest(tmp_path / "a.dcm", SOURCE)
    assert (first.outcome, second.outcome) == (Outcome.STORED, Outcome.DUPLICATE)
    assert await consistency(runtime) == {"instances": 1, "files": 1}
    study = await runtime.database.db.studies.find_one({})
    assert study is not None and study["instance_count"] == 1


async def test_concurrent_ingest_of_one_instance_stores_it_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    write_instance(tmp_path / "a.dcm")
    results = await asyncio.gather(
        *(runtime.ingestor.ingest(tmp_path / "a.dcm", SOURCE) for _ in range(6))
    )
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["duplicate"] * 5 + ["stored"]
    assert await consistency(runtime) == {"instances": 1, "files": 1}


async def test_conflict_keeps_the_first(runtime: Runtime, tmp_path: Path) -> None:
    spec = write_instance(tmp_path / "a.dcm")
    changed = dataclasses.replace(spec, patient_name="Other^Name")
    write_instance(tmp_path / "b.dcm", changed)
    assert (await runtime.ingestor.ingest(tmp_path / "a.dcm", SOURCE)).outcome is Outcome.STORED
    result = await runtime.ingestor.ingest(tmp_path / "b.dcm", SOURCE)
    assert result.outcome is Outcome.REJECTED
    assert result.reason_code == "conflict"
    assert "already stored with different content" in (result.reason or "")
    assert await stored_bytes(runtime, spec.sop_uid) == (tmp_path / "a.dcm").read_bytes()
    assert await consistency(runtime) == {"instances": 1, "files": 1}


async def test_overwrite_policy_replaces(runtime: Runtime, tmp_path: Path) -> None:
    """Within its study: another series of the same study is fine (its rollups follow);
    moving an instance to another study never is (tests/test_ingest_projects.py)."""
    runtime.ingestor.conflict_policy = "overwrite"
    spec = write_instance(tmp_path / "a.dcm")
    other_series = dataclasses.replace(spec, series_uid=generate_uid(), patient_name="New^Name")
    write_instance(tmp_path / "b.dcm", other_series)
    await runtime.ingestor.ingest(tmp_path / "a.dcm", SOURCE)
    result = await runtime.ingestor.ingest(tmp_path / "b.dcm", SOURCE)
    assert result.outcome is Outcome.STORED
    assert await stored_bytes(runtime, spec.sop_uid) == (tmp_path / "b.dcm").read_bytes()
    assert await consistency(runtime) == {"instances": 1, "files": 1}
    db = runtime.database.db
    assert await db.series.count_documents({"_id": spec.series_uid}) == 0  # emptied series gone
    study = await db.studies.find_one({"_id": spec.study_uid})
    assert study is not None and study["instance_count"] == 1
    assert study["series_uids"] == [other_series.series_uid]


async def test_rejections_leave_nothing_behind(runtime: Runtime, tmp_path: Path) -> None:
    (tmp_path / "text.dcm").write_text("not dicom")
    ds = make_dataset(Spec())
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "nostudy.dcm", enforce_file_format=True)
    for name, reason in (
        ("text.dcm", "not a DICOM Part 10 file"),
        ("nostudy.dcm", "StudyInstanceUID is missing"),
    ):
        result = await runtime.ingestor.ingest(tmp_path / name, SOURCE)
        assert result.outcome is Outcome.REJECTED
        assert reason in (result.reason or "")
    assert await consistency(runtime) == {"instances": 0, "files": 0}
    records = await runtime.database.db.rejections.find({}).sort("at", 1).to_list(None)
    assert [r["reason_code"] for r in records] == ["invalid-dicom", "invalid-dicom"]
    assert "StudyInstanceUID is missing" in records[1]["reason"]
    assert records[1]["source"] == {"kind": "test", "name": ""}


async def test_metadata_larger_than_a_document_is_stored_and_served(
    runtime: Runtime, client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "big.dcm"
    ds, big_values = write_oversized(path)
    result = await runtime.ingestor.ingest(path, SOURCE)
    assert result.outcome is Outcome.STORED, result.reason
    doc = await runtime.database.db.instances.find_one({"_id": ds.SOPInstanceUID})
    assert doc is not None and doc.get("meta_file_id") is not None
    assert await consistency(runtime) == {"instances": 1, "files": 2}
    found = await client.get("/dicomweb/studies", params={"PatientID": "BIG"})
    assert found.status == 200
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/metadata"
    )
    response = await client.get(url)
    assert response.status == 200
    (meta,) = await response.json()
    assert meta["00131010"]["Value"] == [big_values[0]]
    assert meta["00131013"]["Value"] == [big_values[3]]


async def test_unreachable_database_is_unavailable(tmp_path: Path, settings: Settings) -> None:
    dead = dataclasses.replace(settings, mongo_uri=f"mongodb://127.0.0.1:{free_port()}/")
    assert dead.mongo_uri is not None
    database = open_database(dead.mongo_uri, "x", server_selection_timeout_ms=500)
    runtime = build_runtime(dead, database, Metrics(), [])
    write_instance(tmp_path / "a.dcm")
    try:
        with pytest.raises(Unavailable):
            await runtime.ingestor.ingest(tmp_path / "a.dcm", SOURCE)
    finally:
        await runtime.parser.close()
        await database.close()


async def test_checksum_and_keys_are_recorded(runtime: Runtime, tmp_path: Path) -> None:
    spec = write_instance(tmp_path / "a.dcm", patient_name="Doe^Jane", study_date="20240301")
    await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("folder", "a.dcm"))
    doc = await runtime.database.db.instances.find_one({"_id": spec.sop_uid})
    assert doc is not None
    assert doc["sha256"] == hashlib.sha256((tmp_path / "a.dcm").read_bytes()).hexdigest()
    assert doc["size"] == (tmp_path / "a.dcm").stat().st_size
    assert doc["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert doc["source"] == {"kind": "folder", "name": "a.dcm"}
    assert doc["patient_name"] == ["DOE^JANE"]
    assert doc["study_date"].year == 2024
    assert doc["ingested_at"] is not None


async def test_concurrent_ingests_of_one_study_count_exactly(
    runtime: Runtime, tmp_path: Path
) -> None:
    """FerretDB loses concurrent $inc updates; the rollup lock must make counts exact."""
    study = generate_uid()
    series = [generate_uid() for _ in range(3)]
    paths = []
    for i in range(60):
        spec = Spec(
            study_uid=study,
            series_uid=series[i % 3],
            instance_number=i,
            modality="CT" if i % 3 else "MR",
        )
        paths.append(tmp_path / f"{i}.dcm")
        write_instance(paths[-1], spec)
    results = await asyncio.gather(*(runtime.ingestor.ingest(p, SOURCE) for p in paths))
    assert {r.outcome for r in results} == {Outcome.STORED}
    db = runtime.database.db
    doc = await db.studies.find_one({"_id": study})
    assert doc is not None
    assert (doc["instance_count"], doc["series_count"]) == (60, 3)
    assert sorted(doc["modalities"]) == ["CT", "MR"]
    counts = sorted([s["instance_count"] async for s in db.series.find({"study": study})])
    assert counts == [20, 20, 20]
    await consistency(runtime)
