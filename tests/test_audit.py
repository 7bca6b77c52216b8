"""The audit log's buffer: nothing lost while the database is away, bounded, batched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from cloudpacs.audit import AuditLog
from cloudpacs.errors import Unavailable
from cloudpacs.metrics import Metrics
from cloudpacs.runtime import Runtime
from cloudpacs.storage.audit import AuditStore


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
