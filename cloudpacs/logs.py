"""JSON-lines logging, set up once in main(). Messages are stable event names; data in fields.

Patient data never reaches the log: fields named like patient attributes are redacted.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_PATIENT_FIELDS = ("patient", "name", "birth")
REDACTED = "[redacted]"


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """Mask fields whose names suggest patient data (PatientName, patient_id, ...), at any
    depth of nested dicts and lists."""
    return {
        key: REDACTED if _is_patient_field(key) else _redact_value(value)
        for key, value in fields.items()
    }


def _is_patient_field(key: object) -> bool:
    name = str(key).lower()
    return any(word in name for word in _PATIENT_FIELDS)


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return redact(value)
    if isinstance(value, list | tuple | set):
        return [_redact_value(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **redact(fields),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymongo", "aiohttp.access", "botocore", "urllib3", "pydicom", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
