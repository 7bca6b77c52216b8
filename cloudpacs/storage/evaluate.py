"""Evaluate a MongoDB filter on a document in Python, for the filters storage.filters builds.

Why: on FerretDB a filter with anything beside `_id` scans the collection. The study index
(storage.study_index) finds candidate documents by `_id`, and this decides which of them
match, with MongoDB's semantics for what storage.filters produces: equality, `$in`,
`$regex` (with `$options: "i"`), `$gte`/`$lte`/`$gt`/`$lt` and `$and`; an array field
matches when one of its elements does. Anything else raises Unsupported, and the caller
lets the server answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

_MISSING = object()
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$gte": lambda a, b: a >= b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$lt": lambda a, b: a < b,
}


class Unsupported(Exception):
    """The filter uses an operator this module does not evaluate."""


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, condition in query.items():
        if key == "$and":
            if not all(matches(doc, part) for part in condition):
                return False
        elif key.startswith("$"):
            raise Unsupported(key)
        elif not _field_matches(_get(doc, key), condition):
            return False
    return True


def _get(doc: Any, path: str) -> Any:
    value = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _field_matches(value: Any, condition: Any) -> bool:
    if isinstance(condition, dict) and any(key.startswith("$") for key in condition):
        return all(
            _operator(value, op, operand, condition)
            for op, operand in condition.items()
            if op != "$options"
        )
    return _equals(value, condition)


def _operator(value: Any, op: str, operand: Any, condition: dict[str, Any]) -> bool:
    if op == "$in":
        return any(_equals(value, _plain(item)) for item in operand)
    if op == "$regex":
        pattern = _compiled(operand, condition.get("$options", ""))
        return any(isinstance(v, str) and pattern.search(v) for v in _candidates(value))
    compare = _COMPARISONS.get(op)
    if compare is None:
        raise Unsupported(op)
    operand = _plain(operand)
    return any(_same_kind(v, operand) and compare(v, operand) for v in _candidates(value))


def _equals(value: Any, wanted: Any) -> bool:
    wanted = _plain(wanted)
    if value is _MISSING:
        return wanted is None
    if isinstance(value, list) and not isinstance(wanted, list):
        return any(_same_kind(v, wanted) and v == wanted for v in _candidates(value))
    return _same_kind(value, wanted) and _plain(value) == wanted


def _candidates(value: Any) -> list[Any]:
    """The values an operator is tried on: an array's elements, or the value itself."""
    if value is _MISSING:
        return []
    return [_plain(v) for v in value] if isinstance(value, list) else [_plain(value)]


def _plain(value: Any) -> Any:
    """Datetimes as naive UTC: the server's dates have no time zone, ours may."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _same_kind(a: Any, b: Any) -> bool:
    """MongoDB compares values of one type bracket only: numbers, strings, dates, null."""
    return _bracket(a) == _bracket(b)


def _bracket(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "date"
    return type(value).__name__


@lru_cache(maxsize=256)
def _compiled(pattern: str, options: str) -> re.Pattern[str]:
    if set(options) - {"i"}:
        raise Unsupported(f"$options {options!r}")
    # `$` at the very end matches only at the end of the text, as in the server's regexes
    # (Python's `$` would also match before a final newline)
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern, re.IGNORECASE if "i" in options else 0)
