"""The audit log's buffer: nothing lost while the database is away, bounded, batched; and
the trail is append-only by the application's code (all FerretDB can offer)."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cloudpacs.audit import AuditLog
from cloudpacs.errors import Unavailable
from cloudpacs.ingest import Source
from cloudpacs.metrics import Metrics
from cloudpacs.runtime import Runtime
from cloudpacs.storage import schema
from cloudpacs.storage.audit import AuditStore
from cloudpacs.storage.schema import assign_default_project, init_schema
from cloudpacs.storage.sweep import sweep
from tests.factory import write_instance


class FlakyStore:
    """Pure-logic fake: fails while `down`, else keeps what it is given."""

    def __init__(self) -> None:
        self.down = True
        self.batches: list[list[dict[str, Any]]] = []

    async def append(self, records: Sequence[dict[str, Any]]) -> None:
        if self.down:
            raise Unavailable("database unreachable")
        self.batches.append(list(records))


async def test_records_wait_for_the_database_and_the_buffer_is_bounded() -> None:
    store, metrics = FlakyStore(), Metrics()
    log = AuditLog(store, metrics, flush_seconds=0.05, limit=3)  # type: ignore[arg-type]
    for n in range(5):
        log.record(action="search", outcome="ok", user=f"u{n}")
    with pytest.raises(Unavailable):
        await log.flush()
    assert metrics.audit_dropped._value.get() == 2  # beyond the limit: dropped, counted
    store.down = False
    assert await log.flush() == 3
    assert [r["user"] for r in store.batches[0]] == ["u0", "u1", "u2"]
    assert await log.flush() == 0  # nothing written twice


async def test_the_trail_is_written_in_order_and_queried(runtime: Runtime) -> None:
    audit = runtime.audit
    for n in range(1500):  # more than one batch
        audit.record(action="retrieve", outcome="ok", user=f"u{n % 3}", study=f"1.2.{n % 5}")
    assert await audit.flush() == 1500
    store = AuditStore(runtime.database)
    mine = [r async for r in store.query(user="u1", study="1.2.1")]
    assert len(mine) == 100
    times = [r["at"] for r in mine]
    assert times == sorted(times)
    assert [r async for r in store.query(action="delete")] == []


async def test_a_batch_written_again_is_in_the_trail_once(runtime: Runtime) -> None:
    """A flush cancelled after the server applied it (the background writer stopped at
    exit) leaves its records in the buffer; the next flush must neither fail nor copy."""
    store = AuditStore(runtime.database)
    log = AuditLog(store, Metrics(), flush_seconds=3600, limit=100)
    for n in range(3):
        log.record(action="search", outcome="ok", user="twice", detail=str(n))
    await store.append(log._buffer[:2])  # applied, but the flush never saw the reply
    assert await log.flush() == 3
    trail = [r async for r in store.query(user="twice")]
    assert sorted(r["detail"] for r in trail) == ["0", "1", "2"]


REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "cloudpacs"
AUDIT_STORE = PACKAGE / "storage" / "audit.py"


def _calls_on_the_collection(tree: ast.AST) -> set[str]:
    """The methods called on `self.collection` (AuditStore's handle on the audit trail)."""
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and ast.unparse(node.func.value) == "self.collection"
    }


def test_the_code_only_ever_inserts_into_and_reads_the_audit_trail() -> None:
    """FerretDB has no custom roles: there the application's code is the only guard, so no
    code path may update, replace or delete an audit record."""
    tree = ast.parse(AUDIT_STORE.read_text())
    assert _calls_on_the_collection(tree) == {"insert_many", "find"}
    uses = {
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.collection"
    }
    assert uses == {"self.collection.insert_many", "self.collection.find"}
    public = {name for name in vars(AuditStore) if not name.startswith("_")}
    assert public == {"append", "query"}
    # nothing else names the collection: only the store, and the schema that creates it
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in (AUDIT_STORE, PACKAGE / "storage" / "schema.py"):
            continue
        module = ast.parse(path.read_text())
        for node in ast.walk(module):
            named = (isinstance(node, ast.Name) and node.id == "AUDIT") or (
                isinstance(node, ast.alias) and node.name == "AUDIT"
            )
            assert not named, f"{path.relative_to(REPO)} names the audit collection"
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                assert node.slice.value != schema.AUDIT, f"{path.relative_to(REPO)}: db['audit']"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                opened = node.func.attr == "get_collection" and any(
                    isinstance(a, ast.Constant) and a.value == schema.AUDIT for a in node.args
                )
                assert not opened, f"{path.relative_to(REPO)} opens the audit collection"
    # the schema only creates the collection and its indexes
    schema_tree = ast.parse((PACKAGE / "storage" / "schema.py").read_text())
    assert schema.APP_APPEND_ONLY == (schema.AUDIT,)
    assert schema.AUDIT not in schema.APP_READ_WRITE
    for node in ast.walk(schema_tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node.slice) == "AUDIT":
            raise AssertionError(f"schema.py opens the audit collection: {ast.unparse(node)}")


async def test_a_written_audit_record_never_changes(
    runtime: Runtime, client: Any, tmp_path: Path
) -> None:
    """Whatever the application does afterwards (deletion, sweep, schema and project
    migrations at start-up, tokens), the records written stay exactly as they were."""
    db = runtime.database.db
    spec = write_instance(tmp_path / "a.dcm")
    await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("test", project="lab"))
    study = f"/dicomweb/studies/{spec.study_uid}"
    assert (await client.get(study + "/metadata")).status == 200
    token = await runtime.tokens.create("ann", {"lab": "reader"}, 1)
    await runtime.audit.flush()
    written = await db.audit.find({}).to_list(None)
    assert {r["action"] for r in written} >= {"store.instance", "retrieve"}

    assert (await client.delete(study)).status == 200
    await runtime.tokens.revoke(token.record["_id"])
    await sweep(runtime.store, 0, full=True)
    await init_schema(runtime.database)
    await assign_default_project(runtime.database, "default")
    assert (await client.get(study)).status == 404
    await runtime.audit.flush()
    now = {r["_id"]: r for r in await db.audit.find({}).to_list(None)}
    assert all(now.get(r["_id"]) == r for r in written), "an audit record changed or went"
    assert len(now) == len(written) + 2  # the deletion and the retrieval after it
