"""Where recently read instances are: per app node, so that a repeated WADO-RS instance
read costs no database lookup (perf/RESULTS.md: the lookup was more than half the CPU of
such a read, in pymongo and FerretDB), and a repeated series or study retrieval only the
lookup of its member lists.

An entry is an instance's place (its file, transfer syntax, study, series, project, size):
fields that only an overwrite or a deletion change, and both delete the instance's file.
So an entry is used only while its file still exists in a directory file store (checked on
every use, which another node's overwrite or deletion is seen by too), and only for
`max_age_seconds`, which bounds the one case the file check misses: a node that crashed
between changing the documents and deleting the old file (the sweep deletes it later).
GridFS stores have no local file to check, and use no cache.

Each lookup is reported to `on_lookup` (the runtime counts them in Prometheus) as `hit`,
`miss`, `expired` (too old) or, after a hit, `stale` (its file was gone).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

# What a cached place holds; reads that need other fields go to the database.
PLACE_FIELDS = frozenset(
    {
        *("file_id", "transfer_syntax", "study", "series", "project", "size", "meta_file_id"),
        *("series_number", "instance_number"),  # the order of a series or study retrieval
    }
)


class PlaceCache:
    def __init__(
        self,
        max_entries: int,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_lookup: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._on_lookup = on_lookup
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def get(self, sop_uid: str) -> dict[str, Any] | None:
        """A copy of the place (the caller may change it), or None if absent or too old."""
        entry = self._entries.get(sop_uid)
        if entry is None:
            self._on_lookup("miss")
            return None
        stored_at, place = entry
        if self._clock() - stored_at > self.max_age_seconds:
            del self._entries[sop_uid]
            self._on_lookup("expired")
            return None
        self._entries.move_to_end(sop_uid)
        self._on_lookup("hit")
        return dict(place)

    def put(self, doc: dict[str, Any]) -> None:
        """Keep the place of an instance document read with all of PLACE_FIELDS."""
        if self.max_entries < 1:
            return
        place = {key: doc[key] for key in PLACE_FIELDS | {"_id"} if key in doc}
        self._entries[doc["_id"]] = (self._clock(), place)
        self._entries.move_to_end(doc["_id"])
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def stale(self, sop_uid: str) -> None:
        """A place handed out whose file was gone (overwritten or deleted, maybe elsewhere)."""
        self._entries.pop(sop_uid, None)
        self._on_lookup("stale")

    def forget(self, sop_uids: Iterable[str]) -> None:
        for sop_uid in sop_uids:
            self._entries.pop(sop_uid, None)

    def __len__(self) -> int:
        return len(self._entries)
