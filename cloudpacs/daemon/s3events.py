"""SQS message bodies -> the S3 objects they announce (pure).

Understands S3 event notifications (several records per message, URL-encoded keys with '+'
for spaces), the s3:TestEvent S3 sends when notifications are configured, S3 events wrapped
in an SNS envelope (S3 -> SNS -> SQS fan-out) and EventBridge "Object Created" events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from cloudpacs.aws.objects import S3Object


@dataclass(frozen=True)
class Parsed:
    """What a message asks for: objects to ingest, or nothing (with why)."""

    objects: tuple[S3Object, ...] = ()
    ignored: str | None = None  # e.g. a test event or a deletion: acknowledge, do nothing
    invalid: str | None = None  # not a message we understand: record, remove, never retry


def parse_message(body: str) -> Parsed:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        return Parsed(invalid="message body is not JSON")
    if not isinstance(data, dict):
        return Parsed(invalid="message body is not a JSON object")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        return parse_message(data["Message"])  # SNS envelope
    if data.get("Event") == "s3:TestEvent":
        return Parsed(ignored="s3:TestEvent")
    if "Records" in data:
        return _s3_records(data["Records"])
    if data.get("source") == "aws.s3" and "detail" in data:
        return _eventbridge(data)
    return Parsed(invalid="not an S3, SNS or EventBridge event")


def _s3_records(records: Any) -> Parsed:
    if not isinstance(records, list):
        return Parsed(invalid="Records is not a list")
    objects: list[S3Object] = []
    skipped: list[str] = []
    for record in records:
        try:
            name = str(record.get("eventName", ""))
            s3 = record["s3"]
            bucket = s3["bucket"]["name"]
            obj = s3["object"]
            key = unquote_plus(obj["key"])  # S3 URL-encodes keys, '+' for spaces
        except (KeyError, TypeError, AttributeError):
            return Parsed(invalid="S3 record without bucket name or object key")
        if not name.startswith("ObjectCreated:"):
            skipped.append(name or "unnamed event")
            continue
        objects.append(
            S3Object(
                bucket=bucket,
                key=key,
                size=_int(obj.get("size")),
                etag=obj.get("eTag") or obj.get("etag"),
                event_time=_time(record.get("eventTime")),
            )
        )
    if not objects:
        return Parsed(ignored=f"no ObjectCreated records ({', '.join(skipped) or 'empty'})")
    return Parsed(objects=tuple(objects))


def _eventbridge(data: dict[str, Any]) -> Parsed:
    if data.get("detail-type") != "Object Created":
        return Parsed(ignored=f"EventBridge {data.get('detail-type')!r}")
    try:
        detail = data["detail"]
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]  # EventBridge keys are not URL-encoded
    except (KeyError, TypeError):
        return Parsed(invalid="EventBridge event without bucket name or object key")
    return Parsed(
        objects=(
            S3Object(
                bucket=bucket,
                key=key,
                size=_int(obj.get("size")),
                etag=obj.get("etag"),
                event_time=_time(data.get("time")),
            ),
        )
    )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
