"""`db init` on a real FerretDB: idempotent, indexes present, validator degradation said."""

from __future__ import annotations

from cloudpacs.runtime import Runtime
from cloudpacs.storage.schema import INSTANCE_INDEXES, STUDY_INDEXES, init_schema


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
