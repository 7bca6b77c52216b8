"""Study searches on the study keys: through the study index, or by scanning the slim
search documents (storage.study_index, documents.SEARCH_KEYS); the study rollups of the page
come back in UID order either way."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cloudpacs.dicom.matching import Match
from cloudpacs.storage import evaluate, study_index
from cloudpacs.storage.schema import (
    CHECKPOINTS,
    STUDIES,
    STUDY_LOOKUP_READY,
    STUDY_SEARCH,
    STUDY_SEARCH_READY,
)
from cloudpacs.storage.study_index import LOOKUPS_AT_ONCE, StudyIndex

if TYPE_CHECKING:
    from cloudpacs.storage.instances import InstanceStore

# Study index candidates are checked this many at a time, up to about this many in all
# (beyond, one scan of the search documents costs less than the lookups: perf/RESULTS.md).
CHECKS_AT_ONCE = 64
MAX_CHECKS = 3000
# Checking one candidate (its search document by _id) costs FerretDB about as much CPU as
# scanning this many search documents (perf/bench_study_plan.py: 9.3 at 1 request at a time,
# 5.2 at 16): below that, a scan is cheaper than the index.
SCANS_PER_CHECK = 8
STATS_SECONDS = 5.0


class StudySearches:
    def __init__(self, store: InstanceStore, index: StudyIndex) -> None:
        self.store = store
        self.index = index
        self._index_ready = False
        self._search_ready = False
        self._entered: int | None = None
        self._entered_at: float | None = None

    async def indexed(
        self, matches: Sequence[Match], query: dict[str, Any], skip: int, limit: int
    ) -> list[dict[str, Any]] | None:
        """The study rollups matching `query` (on the study keys and the project), in UID
        order, found through the study index (storage.study_index) with lookups by `_id`
        only. None where a scan serves better: on MongoDB (its indexes answer), before the
        index is built, when no match can be looked up, or when checking the candidates
        would cost more than scanning the search documents."""
        if not any(study_index.indexable(m) for m in matches):
            return None
        if not await self.store.in_scans() or not await self._index_built():
            return None
        entered = await self._studies_entered()
        # reading an entry costs about what checking a candidate does
        budget = None if entered is None or not SCANS_PER_CHECK else entered // SCANS_PER_CHECK
        candidates = await self.index.candidates(matches, budget)
        if candidates is None:
            return None
        ordered, wanted = sorted(candidates), skip + limit
        if entered is not None and min(len(ordered), wanted) * SCANS_PER_CHECK > entered:
            return None
        found: list[str] = []
        checked = 0
        while checked < len(ordered) and len(found) < wanted:
            batch = min(CHECKS_AT_ONCE, max(LOOKUPS_AT_ONCE, wanted - len(found)))
            # candidates are checked on their slim search documents, the page read from
            # the rollups, as a scan does
            docs = await self.store.by_ids(STUDY_SEARCH, ordered[checked : checked + batch])
            checked += batch
            try:
                found += [doc["_id"] for doc in docs if evaluate.matches(doc, query)]
            except evaluate.Unsupported:
                return None
            expected = checked + (wanted - len(found)) * checked / max(len(found), 1)
            if len(found) < wanted and min(expected, len(ordered)) > MAX_CHECKS:
                return None
        return await self.store.by_ids(STUDIES, found[skip:wanted])

    async def _studies_entered(self) -> int | None:
        """The number of studies in the index, read at most every few seconds (for plans)."""
        now = time.monotonic()
        if self._entered_at is None or now - self._entered_at > STATS_SECONDS:
            self._entered = await self.index.studies_entered()
            self._entered_at = now
        return self._entered

    async def _index_built(self) -> bool:
        if not self._index_ready:
            ready = [STUDY_LOOKUP_READY["_id"], STUDY_SEARCH_READY["_id"]]
            self._index_ready = len(await self.store.by_ids(CHECKPOINTS, ready)) == 2
        return self._index_ready

    async def scanned(
        self, query: dict[str, Any], skip: int, limit: int
    ) -> list[dict[str, Any]] | None:
        """The study rollups matching `query` on the search keys (documents.SEARCH_KEYS), in
        UID order: the query scans the slim `study_search` documents, and only the page is
        read from `studies`. None until every study has its search document."""
        if not self._search_ready:
            self._search_ready = bool(
                await self.store.by_ids(CHECKPOINTS, [STUDY_SEARCH_READY["_id"]])
            )
            if not self._search_ready:
                return None
        found = await self.store.find(
            STUDY_SEARCH, query, projection={"_id": 1}, sort=[("_id", 1)], skip=skip, limit=limit
        )
        return await self.store.by_ids(STUDIES, [doc["_id"] for doc in found])
