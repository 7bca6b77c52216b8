"""QIDO Match -> MongoDB filter on one collection (instances, series or studies).

Common attributes map to normalised, indexed keys; any other attribute, private tags
included, is matched inside the stored DICOM JSON (`meta.<tag>.Value`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cloudpacs.dicom import levels as t
from cloudpacs.dicom.keys import normalise_name, normalise_time, parse_date
from cloudpacs.dicom.matching import Match, MatchKind, wildcard_regex
from cloudpacs.errors import InvalidRequest

# Which normalised key answers a tag, per collection.
INSTANCE_KEYS = {
    t.STUDY_INSTANCE_UID: "study",
    t.SERIES_INSTANCE_UID: "series",
    t.SOP_INSTANCE_UID: "_id",
    t.SOP_CLASS_UID: "sop_class",
    t.PATIENT_ID: "patient_id",
    t.PATIENT_NAME: "patient_name",
    t.STUDY_DATE: "study_date",
    t.STUDY_TIME: "study_time",
    t.ACCESSION_NUMBER: "accession",
    t.MODALITY: "modality",
    t.STUDY_ID: "study_id",
    t.REFERRING_PHYSICIAN_NAME: "referring_physician",
    t.SERIES_NUMBER: "series_number",
    t.INSTANCE_NUMBER: "instance_number",
}
SERIES_KEYS = {
    t.SERIES_INSTANCE_UID: "_id",
    t.STUDY_INSTANCE_UID: "study",
    t.MODALITY: "modality",
    t.SERIES_NUMBER: "series_number",
}
STUDY_KEYS = {
    t.STUDY_INSTANCE_UID: "_id",
    t.PATIENT_ID: "patient_id",
    t.PATIENT_NAME: "patient_name",
    t.STUDY_DATE: "study_date",
    t.STUDY_TIME: "study_time",
    t.ACCESSION_NUMBER: "accession",
    t.STUDY_ID: "study_id",
    t.REFERRING_PHYSICIAN_NAME: "referring_physician",
    t.MODALITIES_IN_STUDY: "modalities",
}
UPPERCASE_KEYS = {"patient_name", "referring_physician"}
NUMERIC_KEYS = {"series_number", "instance_number"}


def match_filter(match: Match, keys: dict[str, str]) -> dict[str, Any]:
    field = keys.get(match.tag)
    if field is None:
        return _meta_filter(match)
    if field == "study_date":
        return {field: _date_condition(match)}
    if field == "study_time":
        return {field: _time_condition(match)}
    if field in NUMERIC_KEYS:
        return {field: _number_condition(match)}
    if field in UPPERCASE_KEYS:
        return {field: _string_condition(match, normalise=normalise_name)}
    return {field: _string_condition(match)}


def _meta_filter(match: Match) -> dict[str, Any]:
    path = f"meta.{match.tag}.Value"
    if match.vr == "PN":
        return {f"{path}.Alphabetic": _string_condition(match, case_insensitive=True)}
    if match.vr in ("IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"):
        return {path: _number_condition(match)}
    if match.kind is MatchKind.RANGE:
        suffix = "\uffff" if match.vr in ("TM", "DT") else ""  # an open-ended upper bound
        return {path: _range(match, str, lambda high: high + suffix)}
    return {path: _string_condition(match)}


def _string_condition(match: Match, normalise: Any = None, case_insensitive: bool = False) -> Any:
    def norm(value: str) -> str:
        return normalise(value) if normalise else value

    if match.kind is MatchKind.LIST:
        return {"$in": [norm(v) for v in match.values]}
    if match.kind is MatchKind.WILDCARD:
        condition: dict[str, Any] = {"$regex": wildcard_regex(norm(match.value))}
        if case_insensitive:
            condition["$options"] = "i"
        return condition
    if case_insensitive:
        return {"$regex": "^" + re.escape(match.value) + "$", "$options": "i"}
    return norm(match.value)


def _number_condition(match: Match) -> Any:
    try:
        numbers = [float(v) for v in match.values]
    except ValueError:
        raise InvalidRequest(f"attribute {match.tag} needs numbers") from None
    as_ints = [int(n) if n.is_integer() else n for n in numbers]
    if match.kind is MatchKind.LIST:
        return {"$in": as_ints}
    return as_ints[0]


def _range(match: Match, low_of: Callable[[str], Any], high_of: Callable[[str], Any]) -> Any:
    """{$gte, $lte} for a RANGE match with open ends allowed (PS3.4 C.2.2.2.5)."""
    low, high = match.values
    condition: dict[str, Any] = {}
    if low:
        condition["$gte"] = low_of(low)
    if high:
        condition["$lte"] = high_of(high)
    return condition


def _date_condition(match: Match) -> Any:
    def date(value: str) -> Any:
        parsed = parse_date(value)
        if parsed is None:
            raise InvalidRequest(f"invalid date {value!r}: use YYYYMMDD")
        return parsed

    if match.kind is MatchKind.RANGE:
        return _range(match, date, date)
    if match.kind is MatchKind.LIST:
        return {"$in": [date(v) for v in match.values]}
    return date(match.value)


def _time_condition(match: Match) -> Any:
    def time(value: str, end: bool = False) -> str:
        text = value.strip()
        if end and "." not in text:
            # an upper bound of "1200" covers 12:00:59.999999 (PS3.4 C.2.2.2.5)
            text = text.ljust(6, "9") + ".999999"
        normalised = normalise_time(text)
        if normalised is None:
            raise InvalidRequest(f"invalid time {value!r}: use HHMMSS[.FFFFFF]")
        return normalised

    if match.kind is MatchKind.RANGE:
        return _range(match, time, lambda value: time(value, end=True))
    return time(match.value)
