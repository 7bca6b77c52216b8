"""Real `cloudpacs` processes on one queue: several daemons, SIGTERM, wiring, S3 backfill."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from cloudpacs.aws.clients import AwsClients, make_clients
from tests.conftest import FerretServer
from tests.factory import Spec, make_dataset

CLOUDPACS = str(Path(sys.executable).parent / "cloudpacs")


@pytest.fixture
def aws(moto_endpoint: str) -> AwsClients:
    return make_clients("us-east-1", moto_endpoint, 20)


@pytest.fixture
def env(ferretdb: FerretServer, moto_endpoint: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CLOUDPACS_MONGO_URI": ferretdb.uri,
        "CLOUDPACS_DATABASE": f"p_{uuid.uuid4().hex[:10]}",
        "CLOUDPACS_AWS_ENDPOINT_URL": moto_endpoint,
        "CLOUDPACS_AWS_REGION": "us-east-1",
        "CLOUDPACS_SQS_WAIT_SECONDS": "1",
        "CLOUDPACS_SQS_RETRY_BASE_SECONDS": "1",
        "CLOUDPACS_DRAIN_SECONDS": "5",
        "CLOUDPACS_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def db(env: dict[str, str], ferretdb: FerretServer) -> Iterator[Any]:
    client: MongoClient[Any] = MongoClient(ferretdb.uri)
    yield client[env["CLOUDPACS_DATABASE"]]
    client.drop_database(env["CLOUDPACS_DATABASE"])
    client.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLOUDPACS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def wire(env: dict[str, str], aws: AwsClients) -> tuple[str, str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    aws.s3.create_bucket(Bucket=name)
    done = cli(env, "aws", "wire-bucket", "--bucket", name, "--queue", name)
    assert done.returncode == 0, done.stderr
    queue_url = aws.sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return name, queue_url


def put_instances(aws: AwsClients, bucket: str, folder: Path, n: int, prefix: str = "") -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    sops = set()
    studies = [Spec().study_uid for _ in range(10)]
    for i in range(n):
        spec = Spec(study_uid=studies[i % 10], instance_number=i)
        path = folder / f"{i}.dcm"
        make_dataset(spec).save_as(path, enforce_file_format=True)
        aws.s3.put_object(Bucket=bucket, Key=f"{prefix}{i:05d}.dcm", Body=path.read_bytes())
        sops.add(spec.sop_uid)
    return sops


def start_daemon(env: dict[str, str], home: Path, queue_url: str) -> subprocess.Popen[str]:
    home.mkdir(parents=True, exist_ok=True)
    with (home / "daemon.log").open("a") as log:
        return subprocess.Popen(
            [CLOUDPACS, "ingest", "--home", str(home), "--sqs-queue", queue_url],
            env=env,
            stdout=log,
            stderr=log,
            text=True,
        )


def stop(process: subprocess.Popen[str], timeout: float = 30) -> int:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        raise


def wait_for(predicate: Any, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def queue_is_empty(aws: AwsClients, url: str) -> bool:
    attrs = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (
        attrs["ApproximateNumberOfMessages"] == "0"
        and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    )


def test_wire_bucket_cli_dry_run(env: dict[str, str], aws: AwsClients) -> None:
    aws.s3.create_bucket(Bucket="dry-run-bucket")
    done = cli(
        env, "aws", "wire-bucket", "--bucket", "dry-run-bucket", "--queue", "dry-q", "--dry-run"
    )
    assert done.returncode == 0, done.stderr
    assert "would: create queue dry-q" in done.stdout
    with pytest.raises(aws.sqs.exceptions.QueueDoesNotExist):
        aws.sqs.get_queue_url(QueueName="dry-q")


@pytest.mark.timeout(900)  # 600 objects through 3 processes on 2 cores: minutes when loaded
async def test_three_daemons_on_one_queue_exact_counts(
    env: dict[str, str], aws: AwsClients, db: Any, tmp_path: Path
) -> None:
    bucket, queue_url = wire(env, aws)
    daemons = [start_daemon(env, tmp_path / f"node{i}", queue_url) for i in range(3)]
    try:
        sops = await asyncio.to_thread(put_instances, aws, bucket, tmp_path / "src", 600)
        await asyncio.to_thread(wait_for, lambda: db.instances.count_documents({}) >= 600, 600, 1.0)
        # a message whose rollup lock stayed busy (a loaded machine) is retried after backoff
        await asyncio.to_thread(wait_for, lambda: queue_is_empty(aws, queue_url), 300)
    finally:
        codes = [stop(d) for d in daemons]
    assert codes == [0, 0, 0], [
        (tmp_path / f"node{i}" / "daemon.log").read_text() for i in range(3)
    ]
    stored = {d["_id"] for d in db.instances.find({}, {"_id": 1})}
    assert stored == sops
    assert db.instances.count_documents({}) == 600
    assert db.rejections.count_documents({}) == 0
    # the daemons are stopped: no grace needed to repair a rollup a busy lock left pending
    done = cli({**env, "CLOUDPACS_ORPHAN_GRACE_SECONDS": "0"}, "db", "sweep")
    assert done.returncode == 0, done.stderr
    assert sum(s["instance_count"] for s in db.studies.find({})) == 600
    assert db.studies.count_documents({}) == 10
    assert db["fs.files"].count_documents({}) == 600


async def test_sigterm_mid_batch_releases_and_loses_nothing(
    env: dict[str, str], aws: AwsClients, db: Any, tmp_path: Path
) -> None:
    bucket, queue_url = wire(env, aws)
    sops = await asyncio.to_thread(put_instances, aws, bucket, tmp_path / "src", 150)
    daemon = start_daemon(env, tmp_path / "node", queue_url)
    await asyncio.to_thread(wait_for, lambda: db.instances.count_documents({}) >= 20, 120, 0.2)
    started = time.monotonic()
    code = await asyncio.to_thread(stop, daemon)
    assert code == 0
    assert time.monotonic() - started < 15  # drain_seconds 5 + shutdown
    partial = db.instances.count_documents({})
    assert partial < 150
    second = start_daemon(env, tmp_path / "node", queue_url)
    try:
        await asyncio.to_thread(wait_for, lambda: db.instances.count_documents({}) >= 150, 300, 1.0)
        await asyncio.to_thread(wait_for, lambda: queue_is_empty(aws, queue_url), 120)
    finally:
        assert stop(second) == 0
    assert {d["_id"] for d in db.instances.find({}, {"_id": 1})} == sops


def test_backfill_is_resumable_and_idempotent(
    env: dict[str, str], aws: AwsClients, db: Any, tmp_path: Path
) -> None:
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    aws.s3.create_bucket(Bucket=bucket)
    sops = put_instances(aws, bucket, tmp_path / "src", 30, prefix="old/")
    aws.s3.put_object(Bucket=bucket, Key="old/readme.txt", Body=b"hello")
    aws.s3.put_object(Bucket=bucket, Key="other/x.dcm", Body=b"not under the prefix")
    first = cli(env, "import", "--no-progress", f"s3://{bucket}/old/")
    assert first.returncode == 0, first.stderr
    assert "stored: 30  duplicate: 0  rejected: 1" in first.stdout
    assert "old/readme.txt" in first.stdout
    assert {d["_id"] for d in db.instances.find({}, {"_id": 1})} == sops
    # a second run resumes after the checkpoint: nothing new to do
    second = cli(env, "import", "--no-progress", f"s3://{bucket}/old/")
    assert "stored: 0  duplicate: 0  rejected: 0" in second.stdout
    # new objects after the checkpoint are picked up; forgetting the checkpoint only
    # finds duplicates
    more = put_instances(aws, bucket, tmp_path / "more", 5, prefix="old/z")
    third = cli(env, "import", "--no-progress", f"s3://{bucket}/old/")
    assert "stored: 5  duplicate: 0" in third.stdout
    db.checkpoints.delete_many({})
    fourth = cli(env, "import", "--no-progress", f"s3://{bucket}/old/")
    assert "stored: 0  duplicate: 35  rejected: 1" in fourth.stdout
    assert db.instances.count_documents({}) == len(sops | more)
