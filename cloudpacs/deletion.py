"""Deleting a study, a series or an instance (admins only; the HTTP layer checks roles)."""

from __future__ import annotations

from dataclasses import dataclass

from cloudpacs.errors import NotFound
from cloudpacs.search import Scope
from cloudpacs.storage.instances import InstanceStore

_FIELDS = {"file_id": 1, "meta_file_id": 1, "study": 1, "series": 1, "project": 1}


@dataclass(frozen=True)
class Deleted:
    instances: int
    project: str | None  # the project that held them (a study is in exactly one)


class DeletionService:
    def __init__(self, store: InstanceStore) -> None:
        self.store = store

    async def delete(self, scope: Scope, sop: str | None) -> Deleted:
        """Delete what the scope names; 404 when nothing visible matches."""
        query = scope.instance_filter()
        if sop:
            query["_id"] = sop
        docs = await self.store.find("instances", query, projection=_FIELDS)
        if not docs:
            raise NotFound("no such study, series or instance")
        await self.store.remove_instances(docs)
        projects = sorted({str(d["project"]) for d in docs if d.get("project")})
        return Deleted(len(docs), projects[0] if len(projects) == 1 else None)
