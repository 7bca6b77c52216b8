"""QIDO-RS search service: a QidoQuery at one level -> DICOM JSON results.

Study and series searches run on the small rollup collections; conditions on attributes a
rollup does not carry are answered by the instances and joined by UID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudpacs.dicom import levels as t
from cloudpacs.dicom.jsonmodel import with_absolute_bulk_uris
from cloudpacs.dicom.levels import Level
from cloudpacs.dicom.matching import Match, QidoQuery
from cloudpacs.storage.filters import INSTANCE_KEYS, SERIES_KEYS, STUDY_KEYS, match_filter
from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.schema import INSTANCES, SERIES, STUDIES

STUDY_FIELDS = frozenset(STUDY_KEYS) | frozenset(t.STUDY_ATTRIBUTES)
SERIES_FIELDS = frozenset(SERIES_KEYS) | frozenset(t.SERIES_ATTRIBUTES)


@dataclass(frozen=True)
class Scope:
    """UIDs fixed by the URL path (e.g. /studies/{study}/series), and the projects the caller
    may see (None: all of them)."""

    study: str | None = None
    series: str | None = None
    projects: frozenset[str] | None = None

    def project_filter(self) -> dict[str, Any]:
        if self.projects is None:
            return {}
        return {"project": {"$in": sorted(self.projects)}}

    def may_see(self, doc: dict[str, Any]) -> bool:
        return self.projects is None or doc.get("project") in self.projects

    def admits(self, doc: dict[str, Any]) -> bool:
        """Whether an instance document lies in this scope."""
        if (self.study and doc["study"] != self.study) or (
            self.series and doc["series"] != self.series
        ):
            return False
        return self.may_see(doc)

    def instance_filter(self) -> dict[str, Any]:
        """The instances this scope covers: its study and series, in the caller's projects."""
        out = self.project_filter()
        if self.study:
            out["study"] = self.study
        if self.series:
            out["series"] = self.series
        return out


class SearchService:
    def __init__(self, store: InstanceStore) -> None:
        self.store = store

    async def search(
        self, level: Level, query: QidoQuery, scope: Scope, base_url: str
    ) -> list[dict[str, Any]]:
        if level is Level.STUDY:
            return await self._studies(query, scope, base_url)
        if level is Level.SERIES:
            return await self._series(query, scope, base_url)
        return await self._instances(query, scope, base_url)

    async def _studies(self, query: QidoQuery, scope: Scope, base_url: str) -> list[dict[str, Any]]:
        own = [m for m in query.matches if m.tag in STUDY_FIELDS]
        other = [m for m in query.matches if m.tag not in STUDY_FIELDS]
        conditions = [_on(m, STUDY_KEYS) for m in own] + [scope.project_filter()]
        docs = None
        if not other and all(m.tag in STUDY_KEYS for m in own):  # the study index may tell
            docs = await self.store.study_searches.indexed(
                own, _and(conditions), query.offset, query.limit
            )
        if other:
            studies = await self._distinct_instances("study", other, scope.project_filter())
            conditions.append({"_id": {"$in": studies}})
        if docs is None and all(m.tag in STUDY_KEYS for m in own):  # slim documents suffice
            docs = await self.store.study_searches.scanned(
                _and(conditions), query.offset, query.limit
            )
        if docs is None:
            docs = await self.store.find(
                STUDIES, _and(conditions), sort=[("_id", 1)], skip=query.offset, limit=query.limit
            )
        return [_study_json(doc, query, base_url) for doc in docs]

    async def _series(self, query: QidoQuery, scope: Scope, base_url: str) -> list[dict[str, Any]]:
        if scope.study and not query.matches:
            listed = await self._series_of(scope)
            if listed is not None:
                return [_series_json(doc, None, query, base_url) for doc in _page(listed, query)]
        own = [m for m in query.matches if m.tag in SERIES_FIELDS]
        study_level = [
            m for m in query.matches if m.tag not in SERIES_FIELDS and m.tag in STUDY_FIELDS
        ]
        other = [m for m in query.matches if m.tag not in SERIES_FIELDS | STUDY_FIELDS]
        conditions = [_on(m, SERIES_KEYS) for m in own] + [scope.project_filter()]
        if scope.study:
            conditions.append({"study": scope.study})
        if study_level:
            studies = await self.store.distinct(
                STUDIES, "_id", _and([_on(m, STUDY_KEYS) for m in study_level])
            )
            conditions.append({"study": {"$in": studies}})
        if other:
            series = await self._distinct_instances("series", other, scope.instance_filter())
            conditions.append({"_id": {"$in": series}})
        docs = await self.store.find(
            SERIES, _and(conditions), sort=[("_id", 1)], skip=query.offset, limit=query.limit
        )
        study_docs = (
            await self._studies_by_id({d["study"] for d in docs}) if not scope.study else {}
        )
        return [_series_json(doc, study_docs.get(doc["study"]), query, base_url) for doc in docs]

    async def _instances(
        self, query: QidoQuery, scope: Scope, base_url: str
    ) -> list[dict[str, Any]]:
        if scope.study and not query.matches:
            listed = await self.store.listed_instances(scope.study, scope.series, {"meta": 1})
            if listed is not None:
                docs = sorted((d for d in listed if scope.admits(d)), key=lambda d: d["_id"])
                return [_instance_json(doc, scope, query, base_url) for doc in _page(docs, query)]
        conditions = [_on(m, INSTANCE_KEYS) for m in query.matches]
        conditions.append(scope.instance_filter())
        docs = await self.store.find(
            INSTANCES,
            _and(conditions),
            projection={"meta": 1, "study": 1, "series": 1},
            sort=[("_id", 1)],
            skip=query.offset,
            limit=query.limit,
        )
        return [_instance_json(doc, scope, query, base_url) for doc in docs]

    async def _distinct_instances(
        self, key: str, matches: list[Match], scope_filter: dict[str, Any]
    ) -> list[Any]:
        conditions = [_on(m, INSTANCE_KEYS) for m in matches] + [scope_filter]
        return await self.store.distinct(INSTANCES, key, _and(conditions))

    async def _studies_by_id(self, uids: set[str]) -> dict[str, dict[str, Any]]:
        docs = await self.store.by_ids(STUDIES, sorted(uids))
        return {doc["_id"]: doc for doc in docs}

    async def _series_of(self, scope: Scope) -> list[dict[str, Any]] | None:
        """A study's series through its list of series UIDs (lookups by _id, no scan)."""
        assert scope.study
        uids = await self.store.series_of(scope.study)
        if uids is None:
            return None
        docs = await self.store.by_ids(SERIES, sorted(uids))
        return [doc for doc in docs if doc["study"] == scope.study and scope.may_see(doc)]


def _page(docs: list[dict[str, Any]], query: QidoQuery) -> list[dict[str, Any]]:
    return docs[query.offset : query.offset + query.limit]


def _on(match: Match, keys: dict[str, str]) -> dict[str, Any]:
    return match_filter(match, keys)


def _and(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    conditions = [c for c in conditions if c]
    if not conditions:
        return {}
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _is(value: int) -> dict[str, Any]:
    return {"vr": "IS", "Value": [value]}


def _url(value: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [value]}


def _select(attrs: dict[str, Any], level: Level, query: QidoQuery) -> dict[str, Any]:
    """Required return attributes of the level, plus includefield ones (or all)."""
    if query.include_all:
        chosen = attrs
    else:
        wanted = set(t.REQUIRED_RETURN[level]) | query.includefields
        chosen = {tag: value for tag, value in attrs.items() if tag in wanted}
    return dict(sorted(chosen.items()))


def _study_attrs(doc: dict[str, Any], base_url: str) -> dict[str, Any]:
    return {
        **doc.get("meta", {}),
        t.STUDY_INSTANCE_UID: {"vr": "UI", "Value": [doc["_id"]]},
        t.INSTANCE_AVAILABILITY: {"vr": "CS", "Value": ["ONLINE"]},
        t.MODALITIES_IN_STUDY: {"vr": "CS", "Value": sorted(doc.get("modalities", []))},
        t.SOP_CLASSES_IN_STUDY: {"vr": "UI", "Value": sorted(doc.get("sop_classes", []))},
        t.NUMBER_OF_STUDY_RELATED_SERIES: _is(doc.get("series_count", 0)),
        t.NUMBER_OF_STUDY_RELATED_INSTANCES: _is(doc.get("instance_count", 0)),
        t.RETRIEVE_URL: _url(f"{base_url}/studies/{doc['_id']}"),
    }


def _study_json(doc: dict[str, Any], query: QidoQuery, base_url: str) -> dict[str, Any]:
    return _select(_study_attrs(doc, base_url), Level.STUDY, query)


def _series_json(
    doc: dict[str, Any], study: dict[str, Any] | None, query: QidoQuery, base_url: str
) -> dict[str, Any]:
    attrs = {
        **doc.get("meta", {}),
        t.SERIES_INSTANCE_UID: {"vr": "UI", "Value": [doc["_id"]]},
        t.NUMBER_OF_SERIES_RELATED_INSTANCES: _is(doc.get("instance_count", 0)),
        t.RETRIEVE_URL: _url(f"{base_url}/studies/{doc['study']}/series/{doc['_id']}"),
    }
    selected = _select(attrs, Level.SERIES, query)
    if study is not None:  # not scoped by the path: carry the study's attributes too
        study_attrs = _study_attrs(study, base_url)
        study_attrs.pop(t.RETRIEVE_URL)
        wanted = set(t.REQUIRED_RETURN[Level.STUDY]) | query.includefields
        selected.update({k: v for k, v in study_attrs.items() if k in wanted or query.include_all})
    selected[t.STUDY_INSTANCE_UID] = {"vr": "UI", "Value": [doc["study"]]}
    return dict(sorted(selected.items()))


def _instance_json(
    doc: dict[str, Any], scope: Scope, query: QidoQuery, base_url: str
) -> dict[str, Any]:
    url = f"{base_url}/studies/{doc['study']}/series/{doc['series']}/instances/{doc['_id']}"
    meta = with_absolute_bulk_uris(doc.get("meta", {}), url)
    attrs = {
        **meta,
        t.INSTANCE_AVAILABILITY: {"vr": "CS", "Value": ["ONLINE"]},
        t.RETRIEVE_URL: _url(url),
    }
    selected = _select(attrs, Level.INSTANCE, query)
    upper = set(t.REQUIRED_RETURN[Level.STUDY]) | set(t.REQUIRED_RETURN[Level.SERIES])
    if not scope.series:  # not scoped by the path: carry the upper levels' attributes too
        selected.update({k: v for k, v in meta.items() if k in upper})
    for tag, uid in ((t.STUDY_INSTANCE_UID, doc["study"]), (t.SERIES_INSTANCE_UID, doc["series"])):
        selected[tag] = {"vr": "UI", "Value": [uid]}
    return dict(sorted(selected.items()))
