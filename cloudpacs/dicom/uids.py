"""UID syntax (PS3.5 9.1): dot-separated numeric components, at most 64 characters."""

import re

MAX_UID_LENGTH = 64  # PS3.5 9.1
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def uid_problem(value: object) -> str | None:
    """Why `value` is not a well-formed UID, or None when it is."""
    if not isinstance(value, str) or not value:
        return "is missing or empty"
    if len(value) > MAX_UID_LENGTH:
        return f"is longer than {MAX_UID_LENGTH} characters"
    if not _UID_RE.match(value):
        return f"is not a valid UID ({value[:70]!r})"
    return None


def is_uid(value: object) -> bool:
    return uid_problem(value) is None
