"""Series metadata is kept rendered after the first request (storage.kept_metadata): the next
one is a single lookup, with the caller's base URL; it is never stale (ingest, overwrite and
deletion forget it, and a rendering that missed a change is not kept), and never crosses
projects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloudpacs import retrieve
from cloudpacs.errors import NotFound
from cloudpacs.ingest import Outcome, Source
from cloudpacs.retrieve import RetrieveService
from cloudpacs.runtime import Runtime
from cloudpacs.search import Scope
from cloudpacs.storage.instances import InstanceStore
from tests.conftest import BOTH_FILE_STORES
from tests.factory import Spec, write_instance
from tests.storage.listening import listened_store

pytestmark = BOTH_FILE_STORES
BASE = "http://archive/dicomweb"


async def _ingest(runtime: Runtime, path: Path, **spec: Any) -> Spec:
    written = write_instance(path, **spec)
    result = await runtime.ingestor.ingest(path, Source("test"))
    assert result.outcome is Outcome.STORED, result.reason
    return written


async def _series_metadata(
    store: InstanceStore, spec: Spec, base: str = BASE, projects: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    scope = Scope(spec.study_uid, spec.series_uid, projects or frozenset({"default"}))
    text = "".join([p async for p in RetrieveService(store).metadata(scope, None, base)])
    found: list[dict[str, Any]] = json.loads(text)
    return found


def _sops(metadata: list[dict[str, Any]]) -> list[str]:
    return [item["00080018"]["Value"][0] for item in metadata]


async def _three(runtime: Runtime, tmp_path: Path) -> list[Spec]:
    first = await _ingest(runtime, tmp_path / "1.dcm", instance_number=1)
    place = {"study_uid": first.study_uid, "series_uid": first.series_uid}
    rest = [
        await _ingest(runtime, tmp_path / f"{n}.dcm", instance_number=n, **place) for n in (2, 3)
    ]
    return [first, *rest]


async def test_the_second_request_is_one_lookup_with_the_callers_base_url(
    runtime: Runtime, tmp_path: Path, file_store_kind: str
) -> None:
    """With GridFS, one lookup in `kept_metadata`; with the directory store, none at all
    (the text is a file under the store's directory)."""
    specs = await _three(runtime, tmp_path)
    async with listened_store(runtime) as (store, listener):
        first = await _series_metadata(store, specs[0])
        assert _sops(first) == [s.sop_uid for s in specs]
        listener.finds.clear()
        again = await _series_metadata(store, specs[0])
        if file_store_kind == "directory":
            assert listener.finds == []
            kept = runtime.settings.file_dir / "kept_metadata" / f"{specs[0].series_uid}.json"
            assert kept.is_file()
        else:
            assert listener.finds == [("kept_metadata", {"_id": specs[0].series_uid})]
        assert again == first
        other_base = "https://elsewhere.example/dicomweb/projects/default"
        moved = await _series_metadata(store, specs[0], base=other_base)
    pixel_uri = moved[0]["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(f"{other_base}/studies/{specs[0].study_uid}/series/")
    assert json.dumps(moved).replace(other_base, BASE) == json.dumps(first)


async def test_ingest_overwrite_and_deletion_are_seen_at_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    specs = await _three(runtime, tmp_path)
    store = runtime.store
    assert len(await _series_metadata(store, specs[0])) == 3  # now kept
    place = {"study_uid": specs[0].study_uid, "series_uid": specs[0].series_uid}
    fourth = await _ingest(runtime, tmp_path / "4.dcm", instance_number=4, **place)
    assert _sops(await _series_metadata(store, specs[0]))[-1] == fourth.sop_uid

    runtime.ingestor.conflict_policy = "overwrite"
    await _ingest(
        runtime, tmp_path / "2b.dcm", sop_uid=specs[1].sop_uid, instance_number=2,
        series_description="Rewritten", **place,
    )  # fmt: skip
    metadata = await _series_metadata(store, specs[0])
    assert metadata[1]["0008103E"]["Value"] == ["Rewritten"]

    doc = await runtime.database.db.instances.find_one({"_id": specs[2].sop_uid})
    assert doc is not None
    await store.remove_instances([doc])
    remaining = _sops(await _series_metadata(store, specs[0]))
    assert remaining == [specs[0].sop_uid, specs[1].sop_uid, fourth.sop_uid]


async def test_a_rendering_that_missed_a_change_is_not_kept(
    runtime: Runtime, tmp_path: Path
) -> None:
    specs = await _three(runtime, tmp_path)
    keeper = runtime.store.kept_metadata
    rev = await keeper.rev(specs[0].series_uid)
    assert rev is not None
    await _series_metadata(runtime.store, specs[0])
    kept = await keeper.get(specs[0].series_uid)
    assert kept is not None
    place = {"study_uid": specs[0].study_uid, "series_uid": specs[0].series_uid}
    await _ingest(runtime, tmp_path / "4.dcm", instance_number=4, **place)
    assert await keeper.get(specs[0].series_uid) is None  # forgotten by the rollup round
    assert not await keeper.keep(kept, rev)  # rendered before the change: refused
    assert await keeper.get(specs[0].series_uid) is None


async def test_kept_metadata_stays_in_its_project_and_large_series_are_not_kept(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = await _three(runtime, tmp_path)
    await _series_metadata(runtime.store, specs[0])
    assert await runtime.store.kept_metadata.get(specs[0].series_uid) is not None
    with pytest.raises(NotFound):
        await _series_metadata(runtime.store, specs[0], projects=frozenset({"elsewhere"}))

    other = await _ingest(runtime, tmp_path / "o.dcm")
    monkeypatch.setattr(retrieve, "MAX_KEPT_CHARS", 100)
    assert len(await _series_metadata(runtime.store, other)) == 1
    assert await runtime.store.kept_metadata.get(other.series_uid) is None
