"""S3 -> SQS -> cloudpacs against a real moto server and a real FerretDB."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudpacs.aws.clients import AwsClients, make_clients
from cloudpacs.aws.objects import ObjectIngest, S3Object
from cloudpacs.aws.wiring import WiringPlan, wire_bucket
from cloudpacs.daemon.sqs import SqsOptions, SqsSource
from cloudpacs.ingest import UID_IN_USE
from cloudpacs.projects import ProjectRules
from cloudpacs.runtime import Runtime
from cloudpacs.storage.sweep import sweep
from tests.conftest import FerretServer
from tests.factory import Spec, make_dataset


@dataclass
class Wired:
    clients: AwsClients
    bucket: str
    queue_url: str
    dlq_url: str


@pytest.fixture
def aws(moto_endpoint: str) -> AwsClients:
    return make_clients("us-east-1", moto_endpoint, 20)


@pytest.fixture
def receive_limit() -> int:
    """maxReceiveCount of the test queue's redrive policy (small: poison reaches the DLQ fast)."""
    return 2


@pytest.fixture
def wired(aws: AwsClients, receive_limit: int) -> Wired:
    name = f"t-{uuid.uuid4().hex[:10]}"
    aws.s3.create_bucket(Bucket=name)
    plan = WiringPlan(
        bucket=name, queue=name, max_receive_count=receive_limit, visibility_timeout_seconds=30
    )
    wire_bucket(aws.sqs, aws.s3, plan)
    assert plan.queue_url and plan.dlq_url
    return Wired(aws, name, plan.queue_url, plan.dlq_url)


def dicom_bytes(tmp_path: Path, **changes: Any) -> tuple[bytes, Spec]:
    spec = Spec(**changes)
    path = tmp_path / f"{spec.sop_uid}.dcm"
    make_dataset(spec).save_as(path, enforce_file_format=True)
    return path.read_bytes(), spec


@pytest.fixture
async def source(runtime: Runtime, wired: Wired, tmp_path: Path) -> AsyncIterator[SqsSource]:
    options = SqsOptions(
        queue_url=wired.queue_url,
        wait_seconds=1,
        visibility_timeout_seconds=30,
        tmp_dir=tmp_path / "sqs-tmp",
        concurrency=4,
        retry_base_seconds=1,
        max_object_bytes=10 * 1024 * 1024,
    )
    src = SqsSource(wired.clients.sqs, wired.clients.s3, options, runtime.ingestor, runtime.metrics)
    src.start()
    yield src
    await src.stop(5)


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


async def until(predicate: Any, limit: float = 60.0, interval: float = 0.25) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not reached in time")


async def test_wire_bucket_is_idempotent(aws: AwsClients) -> None:
    name = f"t-{uuid.uuid4().hex[:10]}"
    aws.s3.create_bucket(Bucket=name)
    first = wire_bucket(aws.sqs, aws.s3, WiringPlan(bucket=name, queue=name))
    second = wire_bucket(aws.sqs, aws.s3, WiringPlan(bucket=name, queue=name))
    assert first.queue_url == second.queue_url
    assert any("create queue" in a for a in first.actions)
    assert not any("create queue" in a for a in second.actions)
    assert any("already notifies" in a for a in second.actions)
    attrs = aws.sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f"{name}-dlq")
    policy = json.loads(attrs["Policy"])
    assert policy["Statement"][0]["Condition"]["ArnLike"]["aws:SourceArn"] == f"arn:aws:s3:::{name}"
    notification = aws.s3.get_bucket_notification_configuration(Bucket=name)
    assert len(notification["QueueConfigurations"]) == 1
    dry = wire_bucket(aws.sqs, aws.s3, WiringPlan(bucket=name, queue="other"), dry_run=True)
    assert any("create queue other" in a for a in dry.actions)
    with pytest.raises(aws.sqs.exceptions.QueueDoesNotExist):
        aws.sqs.get_queue_url(QueueName="other")


async def test_objects_arrive_and_bad_ones_are_recorded(
    runtime: Runtime, wired: Wired, source: SqsSource, tmp_path: Path
) -> None:
    s3 = wired.clients.s3
    keys = ["plain.dcm", "with space/and more.dcm", "ünïcødé/ß.dcm", "deep/a/b/c/d.dcm"]
    specs = {}
    for key in keys:
        data, spec = dicom_bytes(tmp_path)
        s3.put_object(Bucket=wired.bucket, Key=key, Body=data)
        specs[key] = (spec, data)
    s3.put_object(Bucket=wired.bucket, Key="notes.txt", Body=b"not dicom")
    s3.put_object(Bucket=wired.bucket, Key="empty.dcm", Body=b"")
    db = runtime.database.db

    async def all_stored() -> bool:
        return (
            await db.instances.count_documents({}) == len(keys)
            and await db.rejections.count_documents({}) == 2
        )

    await until(all_stored)
    for key, (spec, data) in specs.items():
        doc = await db.instances.find_one({"_id": spec.sop_uid})
        assert doc is not None and doc["source"]["name"] == f"s3://{wired.bucket}/{key}"
        stored = b"".join([c async for c in runtime.store.stream_file(doc["file_id"])])
        assert stored == data
    reasons = {
        r["source"]["name"].rsplit("/", 1)[-1]: r["reason"]
        for r in await db.rejections.find({}).to_list(None)
    }
    assert "not a DICOM Part 10 file" in reasons["notes.txt"]
    assert "empty file" in reasons["empty.dcm"]
    await until(lambda: _queue_empty(wired))


async def _queue_empty(wired: Wired) -> bool:
    return await asyncio.to_thread(queue_counts, wired.clients.sqs, wired.queue_url) == (0, 0)


async def test_envelopes_test_event_and_deleted_object(
    runtime: Runtime, wired: Wired, source: SqsSource, tmp_path: Path
) -> None:
    s3, sqs = wired.clients.s3, wired.clients.sqs
    data_sns, spec_sns = dicom_bytes(tmp_path)
    data_eb, spec_eb = dicom_bytes(tmp_path)
    # objects under a prefix the bucket does not notify about: we send the events ourselves
    s3.put_bucket_notification_configuration(Bucket=wired.bucket, NotificationConfiguration={})
    s3.put_object(Bucket=wired.bucket, Key="sns/a.dcm", Body=data_sns)
    s3.put_object(Bucket=wired.bucket, Key="eb/b c.dcm", Body=data_eb)
    record = {
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-01-01T00:00:00.000Z",
        "s3": {
            "bucket": {"name": wired.bucket},
            "object": {"key": "sns/a.dcm", "size": len(data_sns)},
        },
    }
    sns = {"Type": "Notification", "Message": json.dumps({"Records": [record]})}
    eventbridge = {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-01-01T00:00:00Z",
        "detail": {"bucket": {"name": wired.bucket}, "object": {"key": "eb/b c.dcm"}},
    }
    gone = dict(record, s3={"bucket": {"name": wired.bucket}, "object": {"key": "gone.dcm"}})
    for body in (
        json.dumps(sns),
        json.dumps(eventbridge),
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": wired.bucket}),
        json.dumps({"Records": [gone]}),
        "garbage that is not json",
    ):
        sqs.send_message(QueueUrl=wired.queue_url, MessageBody=body)
    db = runtime.database.db

    async def done() -> bool:
        return (
            await db.instances.count_documents({}) == 2
            and await db.rejections.count_documents({}) == 2
        )

    await until(done)
    await until(lambda: _queue_empty(wired))
    codes = sorted(r["reason_code"] for r in await db.rejections.find({}).to_list(None))
    assert codes == ["invalid-message", "object-missing"]
    assert {d["_id"] async for d in db.instances.find({}, {"_id": 1})} == {
        spec_sns.sop_uid,
        spec_eb.sop_uid,
    }


async def test_poison_message_ends_in_dead_letter_queue(
    runtime: Runtime, wired: Wired, source: SqsSource
) -> None:
    sqs = wired.clients.sqs
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "no-such-bucket-here"}, "object": {"key": "x.dcm"}},
    }
    sqs.send_message(QueueUrl=wired.queue_url, MessageBody=json.dumps({"Records": [record]}))

    async def in_dlq() -> bool:
        return await asyncio.to_thread(queue_counts, sqs, wired.dlq_url) == (1, 0)

    await until(in_dlq, limit=60)
    assert await runtime.database.db.instances.count_documents({}) == 0
    assert await _queue_empty(wired)


@pytest.mark.parametrize("receive_limit", [5])
async def test_database_outage_loses_and_duplicates_nothing(
    runtime: Runtime, wired: Wired, source: SqsSource, ferretdb: FerretServer, tmp_path: Path
) -> None:
    s3 = wired.clients.s3
    sops = set()
    db = runtime.database.db

    def put(n: int, start: int) -> None:
        for i in range(start, start + n):
            data, spec = dicom_bytes(tmp_path, patient_id=f"P{i % 7}")
            s3.put_object(Bucket=wired.bucket, Key=f"batch/{i:04d}.dcm", Body=data)
            sops.add(spec.sop_uid)

    await asyncio.to_thread(put, 100, 0)
    await until(lambda: _at_least(db, 20), limit=60)
    ferretdb.stop()
    try:
        await asyncio.to_thread(put, 200, 100)
        await asyncio.sleep(20)
    finally:
        ferretdb.start()

    async def all_in() -> bool:
        return await db.instances.count_documents({}) == 300

    await until(all_in, limit=240, interval=1)
    await until(lambda: _queue_empty(wired), limit=60)
    stored = {d["_id"] async for d in db.instances.find({}, {"_id": 1})}
    assert stored == sops
    assert await db.rejections.count_documents({}) == 0
    # an ingest cut between its insert and its rollup is repaired by the sweep
    await sweep(runtime.store, grace_seconds=0)
    assert await db.instances.count_documents({"rollup_pending": True}) == 0
    assert await db.uploads.count_documents({}) == 0
    assert sum([s["instance_count"] async for s in db.studies.find({})]) == 300


async def _at_least(db: Any, n: int) -> bool:
    return bool(await db.instances.count_documents({}) >= n)


async def test_s3_objects_go_to_the_project_of_the_longest_matching_prefix(
    runtime: Runtime, wired: Wired, tmp_path: Path
) -> None:
    rules = ProjectRules.from_settings(
        "default", None, None, (f"{wired.bucket}/=imaging", f"{wired.bucket}/mri/=mri-lab")
    )
    objects = ObjectIngest(
        wired.clients.s3, runtime.ingestor, tmp_path / "t", 10**7, "import", rules
    )
    expected = {}
    for key, project in (("ct/a.dcm", "imaging"), ("mri/b.dcm", "mri-lab")):
        data, spec = dicom_bytes(tmp_path)
        wired.clients.s3.put_object(Bucket=wired.bucket, Key=key, Body=data)
        await objects.ingest(S3Object(wired.bucket, key))
        expected[spec.sop_uid] = project
    for sop, project in expected.items():
        doc = await runtime.database.db.instances.find_one({"_id": sop})
        assert doc is not None and doc["project"] == project


@pytest.mark.parametrize("policy", ["keep-first", "overwrite"])
async def test_s3_objects_are_refused_what_another_project_holds(
    runtime: Runtime, wired: Wired, tmp_path: Path, policy: str
) -> None:
    """S3 (SQS and `import s3://` share ObjectIngest): an object of a study another project
    holds, or reusing its SOP Instance UID in a new study, is rejected and recorded; the
    other project's instance stays as it was."""
    runtime.ingestor.conflict_policy = policy
    bucket = wired.bucket
    rules = ProjectRules.from_settings(
        "default", None, None, (f"{bucket}/a/=alpha", f"{bucket}/b/=beta")
    )
    objects = ObjectIngest(
        wired.clients.s3, runtime.ingestor, tmp_path / "t", 10**7, "import", rules
    )
    alpha_bytes, alpha = dicom_bytes(tmp_path)
    same_study_bytes, same_study = dicom_bytes(tmp_path, study_uid=alpha.study_uid)
    same_uid_bytes, same_uid = dicom_bytes(tmp_path, sop_uid=alpha.sop_uid)
    results = {}
    for key, data in (
        ("a/alpha.dcm", alpha_bytes),
        ("b/same-study.dcm", same_study_bytes),
        ("b/same-uid.dcm", same_uid_bytes),
    ):
        wired.clients.s3.put_object(Bucket=bucket, Key=key, Body=data)
        results[key] = await objects.ingest(S3Object(bucket, key))
    assert [(r.outcome.value, r.reason_code) for r in results.values()] == [
        ("stored", None),
        ("rejected", "wrong-project"),
        ("rejected", "uid-in-use"),
    ]
    assert results["b/same-uid.dcm"].reason == UID_IN_USE
    db = runtime.database.db
    doc = await db.instances.find_one({"_id": alpha.sop_uid})
    assert doc is not None and (doc["project"], doc["study"]) == ("alpha", alpha.study_uid)
    stored = b"".join([c async for c in runtime.store.stream_file(doc["file_id"])])
    assert stored == alpha_bytes
    assert await db.instances.count_documents({}) == 1
    assert await db.studies.find_one({"_id": same_uid.study_uid}) is None
    assert await db.instances.find_one({"_id": same_study.sop_uid}) is None
    rejections = await db.rejections.find({}).sort("at", 1).to_list(None)
    assert [(r["source"]["name"], r["reason_code"]) for r in rejections] == [
        (f"s3://{bucket}/b/same-study.dcm", "wrong-project"),
        (f"s3://{bucket}/b/same-uid.dcm", "uid-in-use"),
    ]
    assert await db.uploads.count_documents({}) == 0
    assert await db["fs.files"].count_documents({}) == 1
