"""The study index of the embedded database: entries read by `_id` that name studies.

FerretDB answers only a lone `{_id: value}` from an index; any other filter decodes every
document of the collection. So on FerretDB, study searches on the common keys read a few
entries of `study_lookup` by `_id` and check only the studies those name:

  patient_id=<value>, accession=<value>         exact values
  name:<p>                                      prefixes of each PatientName group
                                                (upper-cased): its first 1, 2 and 3
                                                characters, and 1, 2 and 3 characters
                                                past each `^` (`SMITH^G`, `SMITH^GR`)
  date:<YYY> / date:<YYYY> / date:<YYYYMM>      decade, year and month of StudyDate
  modality:<m>                                  each modality in the study
  study_index:stats                             `decades` present (bounding open date
                                                ranges) and studies `entered` (for plans)

An entry is only ever added to (a study whose keys change keeps its old entries), so it may
name studies that no longer match: callers check every candidate (storage.evaluate). FerretDB
applies update operators as unisolated read-modify-writes (storage.locks), so entries shared
by many studies are updated under one lock, and the entries of studies arriving together go
in one round (storage.group_commit). On MongoDB its indexes answer these searches and no
entries are written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from cloudpacs.dicom import levels as t
from cloudpacs.dicom.keys import normalise_name, parse_date
from cloudpacs.dicom.matching import Match, MatchKind
from cloudpacs.storage.group_commit import GroupCommit
from cloudpacs.storage.locks import Locks

# Prefix lengths entered for a name group: 1-3 characters, and 1-3 past each component
# separator, so a search for `FAMILY^GI*` reads the entry of its family and given initials
# rather than of every patient whose family name starts with `FAM`.
NAME_PREFIXES = (1, 2, 3)
COMPONENT = "^"
STATS_ID = "study_index:stats"
LOCK_NAME = "study-index"
LOOKUPS_AT_ONCE = 16
EXACT_KEYS = {t.PATIENT_ID: "patient_id", t.ACCESSION_NUMBER: "accession"}
Month = tuple[int, int]


@dataclass(frozen=True)
class Entering:
    study_uid: str
    entry_ids: list[str]
    decade: str | None
    new: bool


def exact_id(key: str, value: Any) -> str:
    return f"{key}={value}"


def entries_of(study: dict[str, Any], modalities: Iterable[str]) -> list[str]:
    """The entries a study belongs in, from its keys (a rollup or its first instance)."""
    out = [exact_id(key, study[key]) for key in EXACT_KEYS.values() if study.get(key)]
    for group in _groups(study.get("patient_name")):
        out += [f"name:{group[:n]}" for n in name_prefix_lengths(group)]
    date = study.get("study_date")
    if isinstance(date, datetime):
        out += [_decade(date.year), _year(date.year), _month((date.year, date.month))]
    out += [f"modality:{m}" for m in modalities if m]
    return list(dict.fromkeys(out))


def decade_of(study: dict[str, Any]) -> str | None:
    date = study.get("study_date")
    return f"{date.year // 10:03d}" if isinstance(date, datetime) else None


def _groups(name: Any) -> list[str]:
    if isinstance(name, str):
        return [name] if name else []
    return [g for g in name or [] if isinstance(g, str) and g]


def _decade(year: int) -> str:
    return f"date:{year // 10:03d}"


def _year(year: int) -> str:
    return f"date:{year:04d}"


def _month(month: Month) -> str:
    return f"date:{month[0]:04d}{month[1]:02d}"


def name_prefix_lengths(text: str) -> list[int]:
    """The prefix lengths of `text` that are entered. They depend only on the characters
    before each length, so every name starting with a literal prefix has that prefix's
    longest entered length too."""
    starts = [0] + [i + 1 for i, char in enumerate(text) if char == COMPONENT]
    lengths = {start + n for start in starts for n in NAME_PREFIXES}
    return sorted(n for n in lengths if n <= len(text))


def name_entries(match: Match) -> list[str] | None:
    """Entries holding every study a PatientName match can find; None if none can tell."""
    out = []
    for value in match.values:
        text = normalise_name(value)
        prefix = _literal_prefix(text) if match.kind is MatchKind.WILDCARD else text
        if not prefix:
            return None
        out.append(f"name:{prefix[: name_prefix_lengths(prefix)[-1]]}")
    return out


def _literal_prefix(pattern: str) -> str:
    for index, char in enumerate(pattern):
        if char in "*?":
            return pattern[:index]
    return pattern


def date_entries(match: Match, decades: Sequence[str]) -> list[str] | None:
    """Entries covering a StudyDate match: single dates and lists by month, a range by the
    fewest decades, years and months (bounded by the decades present)."""
    if match.kind is not MatchKind.RANGE:
        dates = [parse_date(value) for value in match.values]
        if any(d is None for d in dates):
            return None
        return [_month((d.year, d.month)) for d in dates if d is not None]
    low, high = (parse_date(v) if v else None for v in match.values)
    if (match.values[0] and low is None) or (match.values[1] and high is None):
        return None
    if not decades:
        return []
    first, last = (int(decades[0]) * 10, 1), (int(decades[-1]) * 10 + 9, 12)
    start = max(first, (low.year, low.month)) if low else first
    end = min(last, (high.year, high.month)) if high else last
    return _covering(start, end)


def _covering(start: Month, end: Month) -> list[str]:
    out = []
    year, month = start
    while (year, month) <= end:
        if month == 1 and year % 10 == 0 and (year + 9, 12) <= end:
            out.append(_decade(year))
            year += 10
        elif month == 1 and (year, 12) <= end:
            out.append(_year(year))
            year += 1
        else:
            out.append(_month((year, month)))
            year, month = (year, month + 1) if month < 12 else (year + 1, 1)
    return out


def indexable(match: Match) -> bool:
    """Whether the entries (or the UIDs themselves) can tell the studies `match` finds."""
    exact = match.kind in (MatchKind.SINGLE, MatchKind.LIST)
    if match.tag == t.PATIENT_NAME and match.kind is not MatchKind.RANGE:
        return name_entries(match) is not None
    return match.tag == t.STUDY_DATE or (
        exact and match.tag in {t.STUDY_INSTANCE_UID, t.MODALITIES_IN_STUDY, *EXACT_KEYS}
    )


class StudyIndex:
    def __init__(self, entries: Any, locks: Locks) -> None:
        self.entries = entries  # the study_lookup collection
        self.locks = locks
        self._rounds: GroupCommit[Entering, None] = GroupCommit(self._enter_round)

    async def enter(
        self, study_uid: str, entry_ids: list[str], decade: str | None, new: bool = False
    ) -> None:
        """Name the study in these entries (with the studies entered meanwhile: one round);
        `new`: it was not entered before (counted in the stats)."""
        if entry_ids or decade or new:
            await self._rounds.add("", Entering(study_uid, entry_ids, decade, new))

    async def _enter_round(self, _key: str, items: list[Entering]) -> None:
        by_entry: dict[str, list[str]] = {}
        for item in items:
            for entry_id in item.entry_ids:
                by_entry.setdefault(entry_id, []).append(item.study_uid)
        updates = [
            UpdateOne({"_id": key}, {"$addToSet": {"studies": {"$each": uids}}}, upsert=True)
            for key, uids in by_entry.items()
        ]
        decades = sorted({item.decade for item in items if item.decade})
        stats: dict[str, Any] = {"$inc": {"entered": sum(item.new for item in items)}}
        if decades:
            stats["$addToSet"] = {"decades": {"$each": decades}}
        updates.append(UpdateOne({"_id": STATS_ID}, stats, upsert=True))
        async with self.locks.hold(LOCK_NAME):
            await self.entries.bulk_write(updates, ordered=True)

    async def reset_count(self) -> None:
        async with self.locks.hold(LOCK_NAME):
            await self.entries.update_one({"_id": STATS_ID}, {"$set": {"entered": 0}})

    async def studies_entered(self) -> int | None:
        """How many studies were entered (deleted ones included): what a scan would read."""
        docs = await self._lookup([STATS_ID])
        return int(docs[0].get("entered", 0)) if docs else None

    async def candidates(
        self, matches: Sequence[Match], max_entries: int | None = None
    ) -> set[str] | None:
        """UIDs of the studies that may match all of `matches` (a superset: check them), or
        None when no match can be answered from the entries, or when that would take more
        than `max_entries` entries (a scan then costs less)."""
        direct: list[set[str]] = []
        wanted: list[list[str]] = []
        for match in matches:
            if match.tag == t.STUDY_INSTANCE_UID and match.kind is not MatchKind.WILDCARD:
                direct.append(set(match.values))
                continue
            entry_ids = await self._entries_for(match)
            if entry_ids is not None:
                wanted.append(entry_ids)
        if not direct and not wanted:
            return None
        if max_entries is not None and not direct and sum(map(len, wanted)) > max_entries:
            return None
        found = list(direct)
        for entry_ids in wanted:
            docs = await self._lookup(entry_ids)
            found.append({uid for doc in docs for uid in doc.get("studies", [])})
        return set.intersection(*found)

    async def _entries_for(self, match: Match) -> list[str] | None:
        """The entries that hold every study `match` can find; None if none can tell."""
        exact = match.kind in (MatchKind.SINGLE, MatchKind.LIST)
        if match.tag in EXACT_KEYS and exact:
            return [exact_id(EXACT_KEYS[match.tag], v) for v in match.values]
        if match.tag == t.MODALITIES_IN_STUDY and exact:
            return [f"modality:{v}" for v in match.values]
        if match.tag == t.PATIENT_NAME and match.kind is not MatchKind.RANGE:
            return name_entries(match)
        if match.tag == t.STUDY_DATE:
            return date_entries(match, await self._decades() if not exact else [])
        return None

    async def _decades(self) -> list[str]:
        docs = await self._lookup([STATS_ID])
        return sorted(docs[0].get("decades", [])) if docs else []

    async def _lookup(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def one(key: str) -> dict[str, Any] | None:
            async with gate:
                doc: dict[str, Any] | None = await self.entries.find_one({"_id": key})
                return doc

        return [doc for doc in await asyncio.gather(*(one(k) for k in dict.fromkeys(ids))) if doc]
