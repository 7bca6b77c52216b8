"""`db init` on a real FerretDB: idempotent, indexes present, validator degradation said."""

from __future__ import annotations

from pathlib import Path

from cloudpacs.ingest import Source
from cloudpacs.runtime import Runtime
from cloudpacs.storage.schema import (
    INSTANCE_INDEXES,
    STUDY_INDEXES,
    assign_default_project,
    init_schema,
)
from tests.factory import write_instance


async def test_init_twice_is_harmless_and_complete(runtime: Runtime) -> None:
    # the runtime fixture ran init_schema once already
    notes = await init_schema(runtime.database)
    assert any("server-side validation is unavailable on FerretDB" in n for n in notes)
    db = runtime.database.db
    for collection, models in (("instances", INSTANCE_INDEXES), ("studies", STUDY_INDEXES)):
        names = set(await db[collection].index_information())
        assert {m.document["name"] for m in models} <= names
    assert "files_id_1_n_1" in await db["fs.chunks"].index_information()
    assert await db.command("ping")


async def test_data_from_before_projects_joins_the_default_project_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    spec = write_instance(tmp_path / "a.dcm")
    await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("test"))
    db = runtime.database.db
    for name in ("instances", "series", "studies"):  # as an archive from before projects
        await db[name].update_many({}, {"$unset": {"project": ""}})
    await db["study_projects"].delete_many({})
    notes = await assign_default_project(runtime.database, "legacy")
    assert notes == ["3 documents from before projects assigned to 'legacy'"]
    for name in ("instances", "series", "studies"):
        assert await db[name].count_documents({"project": "legacy"}) == 1
    claim = await db["study_projects"].find_one({"_id": spec.study_uid})
    assert claim is not None and claim["project"] == "legacy"
    assert await assign_default_project(runtime.database, "legacy") == []  # marked done
