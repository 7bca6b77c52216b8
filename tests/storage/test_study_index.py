"""The study index of the embedded database (storage.study_index): study searches on
PatientName prefixes, StudyDate values and ranges, ModalitiesInStudy, PatientID and
AccessionNumber read entries and search documents by `_id` only, and answer exactly what a
scan of the search documents answers."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from pathlib import Path
from typing import Any

from cloudpacs.dicom.levels import Level
from cloudpacs.dicom.matching import parse_query
from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from cloudpacs.search import Scope, SearchService
from cloudpacs.storage import study_index
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.schema import init_schema
from tests.factory import Spec, write_instance
from tests.storage.listening import listened_store

BASE = "http://archive/dicomweb"
READY = "index:study_lookup:3"


def test_date_ranges_are_covered_by_the_fewest_decades_years_and_months() -> None:
    (match,) = parse_query([("StudyDate", "20231115-20250310")]).matches
    assert study_index.date_entries(match, ["202"]) == [
        "date:202311",
        "date:202312",
        "date:2024",
        "date:202501",
        "date:202502",
        "date:202503",
    ]
    (open_low,) = parse_query([("StudyDate", "-20211231")]).matches
    assert study_index.date_entries(open_low, ["199", "200", "201", "202"]) == [
        "date:199",
        "date:200",
        "date:201",
        "date:2020",
        "date:2021",
    ]
    (open_high,) = parse_query([("StudyDate", "20290301-")]).matches
    rest_of_2029 = [f"date:2029{month:02d}" for month in range(3, 13)]
    assert study_index.date_entries(open_high, ["202"]) == rest_of_2029
    assert study_index.date_entries(open_high, []) == []  # no dated study at all
    (outside,) = parse_query([("StudyDate", "18000101-18991231")]).matches
    assert study_index.date_entries(outside, ["202"]) == []


def test_a_study_is_entered_under_its_keys() -> None:
    study = {
        "patient_id": "P1",
        "accession": "A1",
        "patient_name": ["SMITH^ANN", "S"],
        "study_date": datetime(2024, 3, 9),
    }
    assert study_index.entries_of(study, ["CT", "MR"]) == [
        "patient_id=P1",
        "accession=A1",
        "name:S",
        "name:SM",
        "name:SMI",
        "name:SMITH^A",
        "name:SMITH^AN",
        "name:SMITH^ANN",
        "date:202",
        "date:2024",
        "date:202403",
        "modality:CT",
        "modality:MR",
    ]
    assert study_index.decade_of(study) == "202"
    assert study_index.entries_of({"patient_name": [""]}, []) == []


def test_every_name_with_a_literal_prefix_is_in_the_entry_a_search_for_it_reads() -> None:
    rng = random.Random(3)
    alphabet = "AB^"
    for _ in range(500):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        stored = set(study_index.entries_of({"patient_name": [name]}, []))
        for end in range(1, len(name) + 1):
            (match,) = parse_query([("PatientName", name[:end] + "*")]).matches
            (entry,) = study_index.name_entries(match) or [None]
            assert entry in stored, (name, end, entry)
    (family_and_initials,) = parse_query([("PatientName", "GARCIA^GR*")]).matches
    assert study_index.name_entries(family_and_initials) == ["name:GARCIA^GR"]
    (family_only,) = parse_query([("PatientName", "GARC*")]).matches
    assert study_index.name_entries(family_only) == ["name:GAR"]


async def store(runtime: Runtime, path: Path, **spec: Any) -> Spec:
    written = write_instance(path, **spec)
    result = await runtime.ingestor.ingest(path, Source("test"))
    assert result.outcome is Outcome.STORED, result.reason
    return written


async def search(store: InstanceStore, params: list[tuple[str, str]]) -> list[str]:
    scope = Scope(projects=frozenset({"default"}))
    found = await SearchService(store).search(Level.STUDY, parse_query(params), scope, BASE)
    return [item["0020000D"]["Value"][0] for item in found]


QUERIES = [
    [("PatientName", "SMI*")],
    [("PatientName", "S*")],
    [("PatientName", "sm*"), ("StudyDate", "20230101-20241231")],
    [("PatientName", "SMITH^ANN")],
    [("PatientName", "SMITH^ANN\\JONES^CY")],
    [("StudyDate", "20240115")],
    [("StudyDate", "20220101-20231231")],
    [("StudyDate", "-20211231")],
    [("StudyDate", "20240201-")],
    [("StudyDate", "20240115\\20210704")],
    [("ModalitiesInStudy", "MR")],
    [("ModalitiesInStudy", "CT\\PT"), ("PatientID", "P2")],
    [("ModalitiesInStudy", "MR"), ("StudyTime", "100000-")],
    [("PatientID", "P1")],
    [("PatientID", "P1\\P3"), ("AccessionNumber", "A2")],
    [("AccessionNumber", "A1"), ("PatientName", "J*")],
    [("PatientName", "NOBODY*")],
    [("StudyDate", "19990101-19991231")],
    [("ModalitiesInStudy", "MR"), ("limit", "2"), ("offset", "1")],
]
NOT_INDEXED = [  # no match the index can look up: these scan, and must still agree
    [("PatientName", "*ANN")],
    [("ModalitiesInStudy", "M*")],
    [("StudyTime", "100000-")],
]


async def _archive(runtime: Runtime, tmp_path: Path) -> None:
    rng = random.Random(5)
    names = ["Smith^Ann", "Smyth^Bo", "Jones^Cy", "Sam", "Doe^Jane"]
    dates = ["20240115", "20240301", "20230630", "20210704", "20191231", "20251201"]
    for n in range(24):
        spec = {
            "patient_id": f"P{n % 4}",
            "patient_name": names[n % len(names)],
            "study_date": dates[n % len(dates)],
            "study_time": rng.choice(["083000", "101500", "143000"]),
            "accession": f"A{n % 3}",
            "modality": rng.choice(["CT", "MR", "PT"]),
        }
        first = await store(runtime, tmp_path / f"{n}.dcm", **spec)
        if n % 5 == 0:  # a study gaining a modality later
            spec["modality"] = "MR" if spec["modality"] != "MR" else "CT"
            await store(runtime, tmp_path / f"{n}b.dcm", study_uid=first.study_uid, **spec)


def by_id_only(finds: list[tuple[str, dict[str, Any]]]) -> bool:
    return all(list(query) == ["_id"] for _, query in finds)


async def test_indexed_searches_use_ids_only_and_agree_with_scans(
    runtime: Runtime, tmp_path: Path, index_always: None
) -> None:
    await _archive(runtime, tmp_path)
    async with listened_store(runtime) as (indexed, listener):
        answers = [await search(indexed, params) for params in QUERIES]
        assert by_id_only(listener.finds), [f for f in listener.finds if list(f[1]) != ["_id"]]
        assert "study_lookup" in {coll for coll, _ in listener.finds}  # entries read
        unindexed = [await search(indexed, params) for params in NOT_INDEXED]

    await runtime.database.db.checkpoints.delete_one({"_id": READY})
    async with listened_store(runtime) as (scanning, listener):
        assert [await search(scanning, params) for params in QUERIES] == answers
        assert [await search(scanning, params) for params in NOT_INDEXED] == unindexed
        assert not by_id_only(listener.finds)  # these really scanned
    assert sum(map(len, answers)) > 40 and all(answers[n] for n in (0, 1, 5, 10, 13))
    assert answers[16] == answers[17] == []


async def test_small_archives_are_scanned_unless_the_index_names_few_studies(
    runtime: Runtime, tmp_path: Path
) -> None:
    await _archive(runtime, tmp_path)  # 24 studies
    async with listened_store(runtime) as (store_, listener):
        assert len(await search(store_, [("ModalitiesInStudy", "MR")])) > 3
        assert "study_search" in {coll for coll, query in listener.finds if list(query) != ["_id"]}
        listener.finds.clear()
        assert len(await search(store_, [("PatientID", "P1"), ("AccessionNumber", "A1")])) == 2
        assert await search(store_, [("PatientName", "NOBODY*")]) == []
        assert by_id_only(listener.finds)


async def test_stale_entries_never_leak_a_study(
    runtime: Runtime, tmp_path: Path, index_always: None
) -> None:
    first = await store(runtime, tmp_path / "a.dcm", patient_name="Smith^Ann", patient_id="P7")
    other = await store(runtime, tmp_path / "b.dcm", patient_name="Smith^Bo", patient_id="P8")
    db = runtime.database.db
    for rollup in (db.studies, db.study_search):  # the keys changed; the old entries stay
        await rollup.update_one(
            {"_id": first.study_uid}, {"$set": {"patient_name": ["JONES^CY"], "patient_id": "P9"}}
        )
    async with listened_store(runtime) as (indexed, _):
        assert await search(indexed, [("PatientName", "SMI*")]) == [other.study_uid]
        assert await search(indexed, [("PatientID", "P7")]) == []
        projects = Scope(projects=frozenset({"elsewhere"}))
        found = await SearchService(indexed).search(
            Level.STUDY, parse_query([("PatientName", "SMI*")]), projects, BASE
        )
        assert found == []


async def test_concurrent_new_studies_all_enter_the_shared_entries(
    runtime: Runtime, tmp_path: Path, index_always: None
) -> None:
    specs = [
        write_instance(tmp_path / f"{n}.dcm", patient_name=f"Many^{n}", modality="US")
        for n in range(20)
    ]
    results = await asyncio.gather(
        *(runtime.ingestor.ingest(tmp_path / f"{n}.dcm", Source("test")) for n in range(20))
    )
    assert {r.outcome for r in results} == {Outcome.STORED}
    entry = await runtime.database.db.study_lookup.find_one({"_id": "modality:US"})
    assert entry is not None and sorted(entry["studies"]) == sorted(s.study_uid for s in specs)
    stats = await runtime.database.db.study_lookup.find_one({"_id": "study_index:stats"})
    assert stats is not None and stats["entered"] == 20 and stats["decades"] == ["202"]
    async with listened_store(runtime) as (indexed, listener):
        assert len(await search(indexed, [("PatientName", "MAN*")])) == 20
        assert by_id_only(listener.finds)


async def test_archives_from_before_the_index_get_it_built_once(
    runtime: Runtime, tmp_path: Path, index_always: None
) -> None:
    old = await store(runtime, tmp_path / "a.dcm", patient_name="Old^One", modality="MR")
    db = runtime.database.db
    await db.study_lookup.delete_many({})
    await db.checkpoints.delete_one({"_id": READY})
    async with listened_store(runtime) as (store_, listener):
        assert await search(store_, [("ModalitiesInStudy", "MR")]) == [old.study_uid]
        assert not by_id_only(listener.finds)  # not built: a scan, which still finds it
    notes = await init_schema(runtime.database)
    assert "study index built for 1 studies" in notes
    entry = await db.study_lookup.find_one({"_id": "name:OLD"})
    assert entry == {"_id": "name:OLD", "studies": [old.study_uid]}
    assert "study index built" not in " ".join(await init_schema(runtime.database))
    async with listened_store(runtime) as (store_, listener):
        assert await search(store_, [("ModalitiesInStudy", "MR")]) == [old.study_uid]
        assert await search(store_, [("StudyDate", "20240101-")]) == [old.study_uid]
        assert by_id_only(listener.finds)
