"""Parsing of the SQS message shapes S3 notifications arrive in (pure)."""

from __future__ import annotations

import json

from cloudpacs.daemon.s3events import parse_message


def s3_event(*keys: str, name: str = "ObjectCreated:Put", bucket: str = "b") -> dict:  # type: ignore[type-arg]
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": "2026-11-25T08:00:00.123Z",
                "eventName": name,
                "s3": {"bucket": {"name": bucket}, "object": {"key": k, "size": 10, "eTag": "abc"}},
            }
            for k in keys
        ]
    }


def test_several_records_and_url_encoded_keys() -> None:
    parsed = parse_message(json.dumps(s3_event("a/b+c.dcm", "caf%C3%A9/%2Bplus.dcm")))
    assert [o.key for o in parsed.objects] == ["a/b c.dcm", "café/+plus.dcm"]
    assert parsed.objects[0].bucket == "b" and parsed.objects[0].size == 10
    assert parsed.objects[0].event_time is not None and parsed.objects[0].event_time.year == 2026


def test_test_event_and_deletions_are_ignored() -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}
    assert parse_message(json.dumps(test_event)).ignored == "s3:TestEvent"
    deleted = parse_message(json.dumps(s3_event("x", name="ObjectRemoved:Delete")))
    assert deleted.objects == () and deleted.ignored and not deleted.invalid


def test_sns_envelope() -> None:
    envelope = {"Type": "Notification", "MessageId": "1", "Message": json.dumps(s3_event("k.dcm"))}
    assert [o.key for o in parse_message(json.dumps(envelope)).objects] == ["k.dcm"]


def test_eventbridge_object_created() -> None:
    event = {
        "version": "0",
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-11-25T08:00:00Z",
        "detail": {"bucket": {"name": "b"}, "object": {"key": "dir/a b.dcm", "size": 5}},
    }
    (obj,) = parse_message(json.dumps(event)).objects
    assert (obj.bucket, obj.key, obj.size) == ("b", "dir/a b.dcm", 5)


def test_garbage_is_invalid_not_retried() -> None:
    for body in ("not json", "[1,2]", json.dumps({"hello": 1}), json.dumps({"Records": [{}]})):
        parsed = parse_message(body)
        assert parsed.invalid and not parsed.objects, body
