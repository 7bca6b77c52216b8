"""Member lists (study -> series UIDs, series -> SOP Instance UIDs): kept exact by ingest,
deletion and the rollup rebuild, and what lets study and series reads go by `_id` alone
(the only filter FerretDB answers from an index instead of a scan)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from cloudpacs.dicom.levels import Level
from cloudpacs.dicom.matching import parse_query
from cloudpacs.ingest import Outcome, Source
from cloudpacs.retrieve import RetrieveService
from cloudpacs.runtime import Runtime
from cloudpacs.search import Scope, SearchService
from cloudpacs.storage.database import Database
from cloudpacs.storage.instances import InstanceStore
from tests.factory import Spec, write_study

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


class FindFilters(monitoring.CommandListener):
    """The filter of every `find` sent to the server."""

    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.filters.append(dict(event.command.get("filter", {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def _reads(store: InstanceStore, study_uid: str, series_uid: str) -> dict[str, list[str]]:
    """What QIDO and WADO-RS answer for a study and one of its series (as UID lists)."""
    search, retrieve = SearchService(store), RetrieveService(store)
    scope = Scope(study=study_uid)

    async def qido(level: Level, scope: Scope) -> list[str]:
        tag = "00080018" if level is Level.INSTANCE else "0020000E"
        found = await search.search(level, parse_query([]), scope, BASE)
        return [item[tag]["Value"][0] for item in found]

    metadata = [m["00080018"]["Value"][0] async for m in retrieve.metadata(scope, None, BASE)]
    parts = await retrieve.instances(Scope(study=study_uid, series=series_uid), None, "*", BASE)
    return {
        "series": await qido(Level.SERIES, scope),
        "study instances": await qido(Level.INSTANCE, scope),
        "series instances": await qido(Level.INSTANCE, Scope(study_uid, series_uid)),
        "study metadata": metadata,
        "series retrieval": [str(part.location).rsplit("/", 1)[1] async for part in parts],
    }


async def test_reads_go_by_id_only_and_fall_back_to_queries_without_lists(
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

    listener = FindFilters()
    settings = runtime.settings
    assert settings.mongo_uri is not None
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, event_listeners=[listener], tz_aware=True
    )
    try:
        store = InstanceStore(Database(client=client, db=client[settings.database]))
        assert await _reads(store, study_uid, series_uid) == expected
        assert listener.filters, "the reads went to the server"
        assert all(list(f) == ["_id"] and isinstance(f["_id"], str) for f in listener.filters), (
            listener.filters
        )

        # a study stored before member lists existed: the same answers, by query
        db = runtime.database.db
        await db.series_members.delete_many({})
        await db.studies.update_one({"_id": study_uid}, {"$unset": {"series_uids": 1}})
        listener.filters.clear()
        assert await _reads(store, study_uid, series_uid) == expected
        assert any(list(f) != ["_id"] for f in listener.filters)
    finally:
        await client.close()
