"""JSON-lines logging: one object per line, stable event names, and patient data redacted."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from cloudpacs.logs import REDACTED, JsonFormatter, redact, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("cloudpacs.test", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_record_is_one_json_object_on_one_line() -> None:
    line = JsonFormatter().format(record("ingest.stored", source="folder", size=12))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["event"] == "ingest.stored"
    assert (entry["level"], entry["logger"]) == ("info", "cloudpacs.test")
    assert (entry["source"], entry["size"]) == ("folder", 12)
    assert entry["time"].endswith("+00:00")
    assert "msg" not in entry and "args" not in entry  # no LogRecord internals


def test_exceptions_are_kept_on_the_same_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


@pytest.mark.parametrize(
    "extra",
    [
        {"patient_name": "Doe^Jane"},
        {"PatientName": "Doe^Jane"},
        {"patient": {"id": "P1", "display": "Doe^Jane"}},
        {"fields": {"PatientName": "Doe^Jane", "birth_date": "19700101"}},
        {"items": [{"name": "Doe^Jane"}]},
        {"PatientBirthDate": "19700101"},
    ],
)
def test_patient_fields_are_redacted_at_any_depth(extra: dict[str, object]) -> None:
    line = JsonFormatter().format(record("ingest.rejected", **extra, reason="bad UID"))
    assert "Doe^Jane" not in line
    assert "19700101" not in line
    assert REDACTED in line
    assert json.loads(line)["reason"] == "bad UID"  # other fields untouched


def test_redact_keeps_what_is_not_patient_data() -> None:
    fields = {"sop_instance_uid": "1.2.3", "count": 3, "nested": {"study": "1.2"}}
    assert redact(fields) == fields


def test_setup_logging_writes_json_lines_to_stderr(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info")
    log = logging.getLogger("cloudpacs.somewhere")
    log.debug("not.shown")
    log.info("first.event", extra={"patient_name": "Doe^Jane", "n": 1})
    log.warning("second.event")
    logging.getLogger("pymongo.command").info("noisy.library")  # quietened to WARNING
    err = capsys.readouterr().err
    entries = [json.loads(line) for line in err.splitlines()]
    assert [e["event"] for e in entries] == ["first.event", "second.event"]
    assert entries[0]["patient_name"] == REDACTED
    assert "Doe^Jane" not in err
