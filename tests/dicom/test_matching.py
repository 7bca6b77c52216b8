"""QIDO query parsing rules (pure)."""

from __future__ import annotations

import re

import pytest

from cloudpacs.dicom.matching import (
    MAX_LIMIT,
    MatchKind,
    parse_query,
    resolve_tag,
    wildcard_regex,
)
from cloudpacs.errors import InvalidRequest


def test_keywords_and_tags_resolve() -> None:
    assert resolve_tag("PatientName") == "00100010"
    assert resolve_tag("00100010") == "00100010"
    assert resolve_tag("0010,0010") == "00100010"
    assert resolve_tag("0011100a") == "0011100A"
    with pytest.raises(InvalidRequest, match="unknown attribute"):
        resolve_tag("NoSuchKeyword")


def test_match_kinds() -> None:
    q = parse_query(
        [
            ("PatientID", "P1"),
            ("PatientName", "Doe*"),
            ("StudyDate", "20200101-20201231"),
            ("StudyInstanceUID", "1.2.3,1.2.4"),
            ("SeriesNumber", "3"),
            ("AccessionNumber", ""),
        ]
    )
    kinds = {m.tag: m.kind for m in q.matches}
    assert kinds == {
        "00100020": MatchKind.SINGLE,
        "00100010": MatchKind.WILDCARD,
        "00080020": MatchKind.RANGE,
        "0020000D": MatchKind.LIST,
        "00200011": MatchKind.SINGLE,
    }
    assert "00080050" in q.includefields  # empty value: return it, match anything


def test_backslash_uid_list_and_open_ranges() -> None:
    q = parse_query([("SOPInstanceUID", "1.2\\1.3\\1.4"), ("StudyDate", "-20200101")])
    uid, date = q.matches
    assert uid.values == ("1.2", "1.3", "1.4")
    assert date.values == ("", "20200101")


def test_paging_and_includes() -> None:
    q = parse_query(
        [
            ("limit", "5"),
            ("offset", "10"),
            ("includefield", "StudyDescription,00081030"),
            ("includefield", "all"),
        ]
    )
    assert (q.limit, q.offset, q.include_all) == (5, 10, True)
    assert q.includefields == {"00081030"}
    assert parse_query([("limit", "0")]).limit == MAX_LIMIT
    with pytest.raises(InvalidRequest):
        parse_query([("limit", "-1")])
    with pytest.raises(InvalidRequest):
        parse_query([("offset", "x")])


def test_numeric_attribute_needs_a_number() -> None:
    with pytest.raises(InvalidRequest, match="needs a number"):
        parse_query([("InstanceNumber", "abc")])


def test_wildcards_are_anchored_and_escaped() -> None:
    pattern = re.compile(wildcard_regex("D?e^*.x"))
    assert pattern.match("Doe^Jane.x")
    assert not pattern.match("Doe^Jane_x")
    assert not pattern.match("xDoe^Jane.x")
