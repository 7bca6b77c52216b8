"""Normalised search keys derived from an instance's DICOM JSON (indexed in the store)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloudpacs.dicom import levels as t


def first_value(meta: dict[str, Any], tag: str) -> Any:
    values = meta.get(tag, {}).get("Value") or []
    return values[0] if values else None


def first_string(meta: dict[str, Any], tag: str) -> str | None:
    value = first_value(meta, tag)
    return str(value) if value is not None else None


def person_names_upper(meta: dict[str, Any], tag: str) -> list[str]:
    """Every component group (alphabetic, ideographic, phonetic) of a PN, upper-cased."""
    names: list[str] = []
    for value in meta.get(tag, {}).get("Value") or []:
        if isinstance(value, dict):
            names.extend(normalise_name(str(v)) for v in value.values() if v)
    return names


def normalise_name(name: str) -> str:
    return name.upper()


def parse_date(value: str | None) -> datetime | None:
    """A DICOM DA (YYYYMMDD, or the old YYYY.MM.DD) as a datetime, None if malformed."""
    if not value:
        return None
    text = value.strip().replace(".", "")
    try:
        return datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return None


def normalise_time(value: str | None) -> str | None:
    """A DICOM TM as HHMMSS.ffffff, so that times compare as strings."""
    if not value:
        return None
    text = value.strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) % 2 or len(whole) > 6:
        return None
    return f"{whole.ljust(6, '0')}.{fraction.ljust(6, '0')[:6]}"


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def search_keys(meta: dict[str, Any]) -> dict[str, Any]:
    """The normalised keys stored beside the DICOM JSON of one instance."""
    return {
        "patient_id": first_string(meta, t.PATIENT_ID),
        "patient_name": person_names_upper(meta, t.PATIENT_NAME),
        "study_date": parse_date(first_string(meta, t.STUDY_DATE)),
        "study_time": normalise_time(first_string(meta, t.STUDY_TIME)),
        "accession": first_string(meta, t.ACCESSION_NUMBER),
        "modality": first_string(meta, t.MODALITY),
        "study_id": first_string(meta, t.STUDY_ID),
        "referring_physician": person_names_upper(meta, t.REFERRING_PHYSICIAN_NAME),
        "series_number": _int_or_none(first_value(meta, t.SERIES_NUMBER)),
        "instance_number": _int_or_none(first_value(meta, t.INSTANCE_NUMBER)),
    }
