"""Reads by `_id` alone, the only filter FerretDB answers from an index instead of a scan.

Member lists (study -> series UIDs, series -> SOP Instance UIDs) serve study and series
listings, and the study lookup ("patient_id=X" -> study UIDs) exact study searches. Both are
kept exact by ingest, deletion and rebuilds, and queries fall back to scans without them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from cloudpacs.dicom.levels import Level
from cloudpacs.dicom.matching import parse_query
from cloudpacs.ingest import Outcome, Source
from cloudpacs.retrieve import RetrieveService
from cloudpacs.runtime import Runtime
from cloudpacs.search import Scope, SearchService
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.schema import init_schema
from cloudpacs.storage.sweep import sweep
from tests.factory import Spec, write_study
from tests.storage.listening import listened_store

BASE = "http://archive/dicomweb"


async def _store_study(runtime: Runtime, folder: Path, **common: Any) -> list[Spec]:
    written = write_study(folder, n_series=3, per_series=4, **common)
    random.Random(7).shuffle(written)  # arrival order is not retrieval order
    for path, _spec in written:
        result = await runtime.ingestor.ingest(path, Source("test"))
        assert result.outcome is Outcome.STORED, result.reason
    return [spec for _path, spec in written]


def _expected_lists(specs: list[Spec]) -> dict[str, set[str]]:
    lists: dict[str, set[str]] = {}
    for spec in specs:
        lists.setdefault(spec.series_uid, set()).add(spec.sop_uid)
    return lists


async def _lists(runtime: Runtime, study_uid: str) -> tuple[set[str], dict[str, set[str]]]:
    db = runtime.database.db
    study = await db.studies.find_one({"_id": study_uid})
    assert study is not None
    members = await db.series_members.find({"study": study_uid}).to_list(None)
    return set(study["series_uids"]), {m["_id"]: set(m["instances"]) for m in members}


async def test_ingest_deletion_and_rebuild_keep_the_lists_exact(
    runtime: Runtime, tmp_path: Path
) -> None:
    specs = await _store_study(runtime, tmp_path)
    study_uid = specs[0].study_uid
    expected = _expected_lists(specs)
    assert await _lists(runtime, study_uid) == (set(expected), expected)

    gone = [s for s in specs if s.series_uid == specs[0].series_uid]  # a whole series
    gone.append(next(s for s in specs if s.series_uid != specs[0].series_uid))
    docs = await runtime.database.db.instances.find(
        {"_id": {"$in": [s.sop_uid for s in gone]}}
    ).to_list(None)
    await runtime.store.remove_instances(docs)
    left = [s for s in specs if s not in gone]
    expected = _expected_lists(left)
    assert await _lists(runtime, study_uid) == (set(expected), expected)

    await runtime.database.db.series_members.delete_many({})
    await runtime.database.db.studies.update_one({"_id": study_uid}, {"$unset": {"series_uids": 1}})
    await runtime.store.recompute_rollups(study_uid)
    assert await _lists(runtime, study_uid) == (set(expected), expected)


async def _reads(store: InstanceStore, study_uid: str, series_uid: str) -> dict[str, list[str]]:
    """What QIDO and WADO-RS answer for a study and one of its series (as UID lists)."""
    search, retrieve = SearchService(store), RetrieveService(store)
    scope = Scope(study=study_uid)

    async def qido(level: Level, scope: Scope) -> list[str]:
        tag = "00080018" if level is Level.INSTANCE else "0020000E"
        found = await search.search(level, parse_query([]), scope, BASE)
        return [item[tag]["Value"][0] for item in found]

    text = "".join([piece async for piece in retrieve.metadata(scope, None, BASE)])
    metadata = [m["00080018"]["Value"][0] for m in json.loads(text)]
    parts = await retrieve.instances(Scope(study=study_uid, series=series_uid), None, "*", BASE)
    return {
        "series": await qido(Level.SERIES, scope),
        "study instances": await qido(Level.INSTANCE, scope),
        "series instances": await qido(Level.INSTANCE, Scope(study_uid, series_uid)),
        "study metadata": metadata,
        "series retrieval": [str(part.location).rsplit("/", 1)[1] async for part in parts],
    }


def by_id_only(filters: list[dict[str, Any]]) -> bool:
    return all(list(f) == ["_id"] and isinstance(f["_id"], str) for f in filters)


async def test_reads_go_by_id_only_and_fall_back_to_queries_until_a_sweep_adds_lists(
    runtime: Runtime, tmp_path: Path
) -> None:
    specs = await _store_study(runtime, tmp_path)
    study_uid, series_uid = specs[0].study_uid, specs[0].series_uid
    by_position = sorted(specs, key=lambda s: (s.series_number, s.instance_number))
    expected = {
        "series": sorted({s.series_uid for s in specs}),
        "study instances": sorted(s.sop_uid for s in specs),
        "series instances": sorted(s.sop_uid for s in specs if s.series_uid == series_uid),
        "study metadata": [s.sop_uid for s in by_position],
        "series retrieval": [s.sop_uid for s in by_position if s.series_uid == series_uid],
    }
    async with listened_store(runtime) as (store, listener):
        assert await _reads(store, study_uid, series_uid) == expected
        assert listener.filters, "the reads went to the server"
        assert by_id_only(listener.filters), listener.filters

        # a study stored before member lists existed: the same answers, by query
        db = runtime.database.db
        await db.series_members.delete_many({})
        await db.studies.update_one({"_id": study_uid}, {"$unset": {"series_uids": 1}})
        listener.filters.clear()
        assert await _reads(store, study_uid, series_uid) == expected
        assert not by_id_only(listener.filters)

        # ... until a sweep gives it its lists
        assert (await sweep(runtime.store, grace_seconds=0)).studies_repaired == 1
        assert (await sweep(runtime.store, grace_seconds=0)).studies_repaired == 0
        listener.filters.clear()
        assert await _reads(store, study_uid, series_uid) == expected
        assert by_id_only(listener.filters), listener.filters


async def _study_search(store: InstanceStore, params: list[tuple[str, str]]) -> list[str]:
    found = await SearchService(store).search(
        Level.STUDY, parse_query(params), Scope(projects=frozenset({"default"})), BASE
    )
    return [item["0020000D"]["Value"][0] for item in found]


async def test_exact_study_searches_use_the_study_lookup(
    runtime: Runtime, tmp_path: Path, index_always: None
) -> None:
    first = await _store_study(runtime, tmp_path / "a", patient_id="LOOK1", accession="A1")
    second = await _store_study(runtime, tmp_path / "b", patient_id="LOOK1", accession="A2")
    other = await _store_study(runtime, tmp_path / "c", patient_id="LOOK2", accession="A3")
    uid1, uid2, uid3 = (specs[0].study_uid for specs in (first, second, other))
    cases = [
        ([("PatientID", "LOOK1")], sorted([uid1, uid2])),
        ([("PatientID", "LOOK1\\LOOK2")], sorted([uid1, uid2, uid3])),
        ([("PatientID", "LOOK1"), ("AccessionNumber", "A2")], [uid2]),
        ([("AccessionNumber", "A3"), ("StudyInstanceUID", f"{uid1},{uid3}")], [uid3]),
        ([("PatientID", "look1")], []),  # PatientID matching is case-sensitive
        ([("PatientID", "NOBODY")], []),
    ]
    async with listened_store(runtime) as (store, listener):
        for params, uids in cases:
            assert await _study_search(store, params) == uids, params
        assert by_id_only(listener.filters), listener.filters

        # a wildcard is not a lookup: it scans, and agrees
        listener.filters.clear()
        assert await _study_search(store, [("PatientID", "LOOK*")]) == sorted([uid1, uid2, uid3])
        assert not by_id_only(listener.filters)

        # a study's patient ID corrected: stale entries are checked against the study
        db = runtime.database.db
        for rollup in (db.studies, db.study_search):
            await rollup.update_one({"_id": uid2}, {"$set": {"patient_id": "LOOK9"}})
        assert await _study_search(store, [("PatientID", "LOOK1")]) == [uid1]


async def test_archives_from_before_the_lookup_get_it_built_once(
    runtime: Runtime, tmp_path: Path, index_always: None
) -> None:
    specs = await _store_study(runtime, tmp_path, patient_id="OLD1")
    db = runtime.database.db
    await db.study_lookup.delete_many({})
    await db.checkpoints.delete_one({"_id": "index:study_lookup:3"})
    async with listened_store(runtime) as (store, listener):
        # not ready: the search scans, and still finds the study
        assert await _study_search(store, [("PatientID", "OLD1")]) == [specs[0].study_uid]
        assert not by_id_only(listener.filters)
        notes = await init_schema(runtime.database)
        assert "study index built for 1 studies" in notes
        assert await db.study_lookup.find_one({"_id": "patient_id=OLD1"}) == {
            "_id": "patient_id=OLD1",
            "studies": [specs[0].study_uid],
        }
        assert "study index built" not in " ".join(await init_schema(runtime.database))
        # a rebuild (a newer index version) counts every study once, not once more
        await db.checkpoints.delete_one({"_id": "index:study_lookup:3"})
        assert "study index built for 1 studies" in await init_schema(runtime.database)
        stats = await db.study_lookup.find_one({"_id": "study_index:stats"})
        assert stats is not None and stats["entered"] == 1
        listener.filters.clear()
        assert await _study_search(store, [("PatientID", "OLD1")]) == [specs[0].study_uid]
        assert by_id_only(listener.filters), listener.filters
