"""The place cache (storage.place_cache) on two app nodes over one FerretDB and one file
directory, over real HTTP: a repeated instance read costs no database lookup, and what one
node overwrites or deletes is never served stale by the other."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientTimeout
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient

from cloudpacs.config import Settings
from cloudpacs.deletion import DeletionService
from cloudpacs.errors import NotFound
from cloudpacs.http.app import create_app
from cloudpacs.ingest import IngestResult, Outcome, Source
from cloudpacs.metrics import Metrics
from cloudpacs.retrieve import AS_STORED, RetrieveService
from cloudpacs.runtime import Runtime, build_runtime
from cloudpacs.search import Scope
from cloudpacs.storage.database import Database
from cloudpacs.storage.file_stores import open_file_store
from cloudpacs.storage.schema import init_schema
from tests.factory import write_instance, write_study
from tests.http.test_wado import ANY_DICOM, Client, get_parts, instance_url, stored
from tests.storage.listening import Finds

READ_COLLECTIONS = {"instances", "instance_reads"}
DEFAULT = frozenset({"default"})


@contextlib.asynccontextmanager
async def node(
    settings: Settings, listener: Finds | None = None
) -> AsyncIterator[tuple[Runtime, Client]]:
    """One app node of the archive in `settings` (its own client, cache and HTTP server)."""
    assert settings.mongo_uri is not None
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, event_listeners=[listener] if listener else [], tz_aware=True
    )
    database = Database(client=mongo, db=mongo[settings.database])
    try:
        notes = await init_schema(database)
        files = await open_file_store(database, settings)
        runtime = build_runtime(settings, database, Metrics(), notes, files=files)
        server = TestServer(create_app(runtime.services()), host="127.0.0.1")
        async with TestClient(server, timeout=ClientTimeout(total=30)) as client:
            yield runtime, client
        await runtime.parser.close()
    finally:
        await mongo.close()


def _reads(listener: Finds) -> list[tuple[str, dict[str, Any]]]:
    return [(name, query) for name, query in listener.finds if name in READ_COLLECTIONS]


async def _json(client: Client, url: str) -> list[dict[str, Any]]:
    response = await client.get(url, headers={"Accept": "application/dicom+json"})
    assert response.status == 200, await response.text()
    found: list[dict[str, Any]] = await response.json(content_type=None)
    return found


def _patient_ids(metadata: list[dict[str, Any]]) -> dict[str, str]:
    return {i["00080018"]["Value"][0]: i["00100020"]["Value"][0] for i in metadata}


async def _lookups(client: Client) -> dict[str, float]:
    """The node's place cache lookups by result, from its Prometheus /metrics."""
    response = await client.get("/metrics")
    assert response.status == 200
    prefix = 'cloudpacs_place_cache_lookups_total{result="'
    found = {}
    for line in (await response.text()).splitlines():
        if line.startswith(prefix):
            labels, value = line.split(" ")
            found[labels[len(prefix) : -2]] = float(value)
    return found


async def _stored_study(
    runtime: Runtime, folder: Path, n_series: int, per_series: int
) -> list[tuple[IngestResult, Path]]:
    written = write_study(folder, n_series=n_series, per_series=per_series)
    return [(await stored(runtime, path), path) for path, _spec in written]


async def _body(client: Client, url: str) -> bytes:
    _, parts = await get_parts(client, url, ANY_DICOM)
    assert len(parts) == 1
    return parts[0].body


@pytest.mark.parametrize("file_store_kind", ["directory"])
async def test_a_repeated_read_needs_no_lookup_and_other_nodes_changes_are_seen(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    written = await _stored_study(runtime, tmp_path / "s", n_series=1, per_series=3)
    first, second, third = [result for result, _ in written]
    listener = Finds()
    async with (
        node(settings, listener) as (node_a, client_a),
        node(settings) as (node_b, client_b),
    ):
        assert node_a.store.places is not None
        original = written[0][1].read_bytes()
        assert await _body(client_a, instance_url(first)) == original
        listener.finds.clear()
        assert await _body(client_a, instance_url(first)) == original
        assert _reads(listener) == [], "a cached place was looked up again"
        series_url = instance_url(first).rsplit("/instances/", 1)[0] + "/metadata"
        assert _patient_ids(await _json(client_a, series_url))[first.sop_uid] == "P0001"

        # node B overwrites the instance: node A's cached place names a deleted file
        node_b.ingestor.conflict_policy = "overwrite"
        spec = {"study_uid": first.study_uid, "series_uid": first.series_uid}
        write_instance(tmp_path / "new.dcm", **spec, sop_uid=first.sop_uid, patient_id="NEW")
        overwritten = await node_b.ingestor.ingest(tmp_path / "new.dcm", Source("test"))
        assert overwritten.outcome is Outcome.STORED, overwritten.reason
        new_bytes = await _body(client_b, instance_url(first))
        assert new_bytes != original
        assert await _body(client_a, instance_url(first)) == new_bytes
        assert await _lookups(client_a) == {"miss": 1.0, "hit": 2.0, "stale": 1.0}
        # and so is the series metadata node A had kept (a file both nodes share)
        assert _patient_ids(await _json(client_a, series_url))[first.sop_uid] == "NEW"

        # node B deletes an instance node A has cached: 404 on A, and A forgets it
        assert await _body(client_a, instance_url(second)) == written[1][1].read_bytes()
        await DeletionService(node_b.store).delete(Scope(second.study_uid), second.sop_uid)
        response = await client_a.get(instance_url(second), headers={"Accept": ANY_DICOM})
        assert response.status == 404, await response.text()
        assert node_a.store.places.get(second.sop_uid) is None

        # a cached place is still checked against the URL and the caller's projects
        assert await _body(client_a, instance_url(third)) == written[2][1].read_bytes()
        wrong = instance_url(third).replace(third.study_uid, "1.2.3.999", 1)
        response = await client_a.get(wrong, headers={"Accept": ANY_DICOM})
        assert response.status == 404
        retrieve = RetrieveService(node_a.store)
        with pytest.raises(NotFound):
            await retrieve.instances(
                Scope(third.study_uid, None, frozenset({"other"})), third.sop_uid, AS_STORED, ""
            )
        # and a node's own deletion forgets at once
        await DeletionService(node_a.store).delete(Scope(third.study_uid), third.sop_uid)
        assert node_a.store.places.get(third.sop_uid) is None
        response = await client_a.get(instance_url(third), headers={"Accept": ANY_DICOM})
        assert response.status == 404


@pytest.mark.parametrize("file_store_kind", ["directory"])
async def test_a_repeated_series_retrieval_reads_only_the_member_list(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    written = await _stored_study(runtime, tmp_path / "s", n_series=2, per_series=3)
    first = written[0][0]
    in_series = [(r, path) for r, path in written if r.series_uid == first.series_uid]
    series_url = instance_url(first).rsplit("/instances/", 1)[0]
    study_url = series_url.rsplit("/series/", 1)[0]
    listener = Finds()
    async with (
        node(settings, listener) as (_, client_a),
        node(settings) as (node_b, _),
    ):
        _, parts = await get_parts(client_a, series_url, ANY_DICOM)
        assert [p.body for p in parts] == [path.read_bytes() for _, path in in_series]
        listener.finds.clear()
        _, again = await get_parts(client_a, series_url, ANY_DICOM)
        assert [p.body for p in again] == [p.body for p in parts]
        assert _reads(listener) == [], "cached places were looked up again"
        assert [name for name, _ in listener.finds] == ["series_members"]
        _, whole = await get_parts(client_a, study_url, ANY_DICOM)
        assert len(whole) == len(written)

        # node B overwrites one instance of the series and deletes another
        (changed, _), (gone, _) = in_series[0], in_series[1]
        node_b.ingestor.conflict_policy = "overwrite"
        spec = {"study_uid": changed.study_uid, "series_uid": changed.series_uid}
        write_instance(tmp_path / "new.dcm", **spec, sop_uid=changed.sop_uid, patient_id="NEW")
        overwritten = await node_b.ingestor.ingest(tmp_path / "new.dcm", Source("test"))
        assert overwritten.outcome is Outcome.STORED, overwritten.reason
        await DeletionService(node_b.store).delete(Scope(gone.study_uid), gone.sop_uid)
        listener.finds.clear()
        _, now = await get_parts(client_a, series_url, ANY_DICOM)
        bodies = {p.headers["content-location"].rsplit("/", 1)[1]: p.body for p in now}
        assert bodies == {
            changed.sop_uid: (tmp_path / "new.dcm").read_bytes(),
            **{r.sop_uid: path.read_bytes() for r, path in in_series[2:]},
        }
        assert ("instance_reads", {"_id": changed.sop_uid}) in _reads(listener)
        lookups = await _lookups(client_a)
        assert lookups["stale"] == 1.0 and lookups["hit"] >= 2 * len(in_series)


@pytest.mark.parametrize("file_store_kind", ["gridfs"])
async def test_gridfs_and_a_zero_size_setting_have_no_cache(
    runtime: Runtime, settings: Settings
) -> None:
    assert runtime.store.places is None
    directory = dataclasses.replace(
        settings, database=settings.database + "d", file_store="directory"
    )
    async with node(directory) as (cached, _):
        assert cached.store.places is not None
        assert cached.store.places.max_entries == directory.place_cache_entries
    async with node(dataclasses.replace(directory, place_cache_entries=0)) as (uncached, _):
        assert uncached.store.places is None
    await runtime.database.client.drop_database(directory.database)
