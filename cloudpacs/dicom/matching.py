"""QIDO-RS query parameters -> a pure query model (PS3.18 8.3.4, PS3.4 C.2.2.2).

Knows DICOM matching rules (universal, single value, wildcard, range, UID list); knows
nothing of the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from pydicom.datadict import dictionary_VR, keyword_dict

from cloudpacs.errors import InvalidRequest

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000
RESERVED_PARAMS = {"limit", "offset", "includefield", "fuzzymatching"}
STRING_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DT",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
}
NUMERIC_VRS = {"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"}
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")


class MatchKind(StrEnum):
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    LIST = "list"


@dataclass(frozen=True)
class Match:
    tag: str  # GGGGEEEE, upper-case hex
    vr: str | None  # None for private tags the dictionary does not know
    kind: MatchKind
    values: tuple[str, ...]  # LIST: the values; RANGE: (low, high), "" for open ends

    @property
    def value(self) -> str:
        return self.values[0]


@dataclass(frozen=True)
class QidoQuery:
    matches: tuple[Match, ...] = ()
    includefields: frozenset[str] = field(default_factory=frozenset)
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    fuzzy: bool = False


def resolve_tag(name: str) -> str:
    """A keyword (PatientName) or tag (00100010, 0010,0010) -> 'GGGGEEEE'."""
    compact = name.replace(",", "").replace("(", "").replace(")", "").strip()
    if _TAG_RE.match(compact):
        return compact.upper()
    if name in keyword_dict:
        return f"{keyword_dict[name]:08X}"
    raise InvalidRequest(f"unknown attribute {name!r}: use a DICOM keyword or an 8-digit tag")


def vr_of(tag: str) -> str | None:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return None


def parse_query(params: list[tuple[str, str]]) -> QidoQuery:
    """Parse decoded query parameters (repeated keys allowed) into a QidoQuery."""
    matches: list[Match] = []
    includes: set[str] = set()
    include_all = fuzzy = False
    limit, offset = DEFAULT_LIMIT, 0
    for key, value in params:
        if key == "limit":
            limit = _non_negative(key, value)
            if limit == 0 or limit > MAX_LIMIT:
                limit = MAX_LIMIT
        elif key == "offset":
            offset = _non_negative(key, value)
        elif key == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item == "all":
                    include_all = True
                elif item:
                    includes.add(resolve_tag(item))
        elif key == "fuzzymatching":
            fuzzy = value.lower() == "true"
        else:
            tag = resolve_tag(key)
            match = _match(tag, value)
            if match is None:
                includes.add(tag)  # an empty value asks for the attribute to be returned
            else:
                matches.append(match)
                includes.add(tag)
    return QidoQuery(tuple(matches), frozenset(includes), include_all, limit, offset, fuzzy)


def _non_negative(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"{key} must be a non-negative integer, not {value!r}") from None
    if number < 0:
        raise InvalidRequest(f"{key} must be a non-negative integer, not {value!r}")
    return number


def _match(tag: str, value: str) -> Match | None:
    vr = vr_of(tag)
    if value == "" or value == "*":
        return None  # universal matching
    if vr in ("DA", "TM", "DT") and "-" in value:
        low, _, high = value.partition("-")
        if not low and not high:
            return None
        return Match(tag, vr, MatchKind.RANGE, (low.strip(), high.strip()))
    if vr == "SQ":
        raise InvalidRequest(f"matching on sequence attribute {tag} is not supported")
    if vr == "UI" or ("\\" in value and vr in (STRING_VRS | NUMERIC_VRS)):
        values = tuple(v.strip() for v in re.split(r"[\\,]", value) if v.strip())
        if len(values) > 1:
            return Match(tag, vr, MatchKind.LIST, values)
        value = values[0] if values else value
    if vr in NUMERIC_VRS:
        try:
            float(value)
        except ValueError:
            raise InvalidRequest(f"attribute {tag} ({vr}) needs a number, not {value!r}") from None
    if ("*" in value or "?" in value) and vr not in {"UI", "DA", "TM", "DT"} | NUMERIC_VRS:
        return Match(tag, vr, MatchKind.WILDCARD, (value,))
    return Match(tag, vr, MatchKind.SINGLE, (value,))


def wildcard_regex(pattern: str) -> str:
    """DICOM wildcards (* any run, ? one character) as an anchored regular expression."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return "^" + "".join(parts) + "$"
