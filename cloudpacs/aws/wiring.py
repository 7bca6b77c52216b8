"""`cloudpacs aws wire-bucket`: queue + dead-letter queue + redrive policy + queue policy +
bucket notification, created or brought up to date idempotently."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

NOTIFICATION_ID_PREFIX = "cloudpacs-"
DLQ_RETENTION_SECONDS = 14 * 24 * 3600  # the SQS maximum, time to inspect poison messages


@dataclass
class WiringPlan:
    bucket: str
    queue: str
    max_receive_count: int = 5
    visibility_timeout_seconds: int = 300
    actions: list[str] = field(default_factory=list)
    queue_url: str | None = None
    dlq_url: str | None = None

    @property
    def dlq(self) -> str:
        return f"{self.queue}-dlq"


def wire_bucket(sqs: Any, s3: Any, plan: WiringPlan, dry_run: bool = False) -> WiringPlan:
    """Make the bucket notify the queue of every created object. Safe to run again."""
    dlq_url = _ensure_queue(
        sqs, plan.dlq, {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}, plan, dry_run
    )
    dlq_arn = _arn(sqs, dlq_url, plan.dlq, dry_run)
    queue_url = _ensure_queue(
        sqs, plan.queue, {"VisibilityTimeout": str(plan.visibility_timeout_seconds)}, plan, dry_run
    )
    queue_arn = _arn(sqs, queue_url, plan.queue, dry_run)
    attributes = {
        "VisibilityTimeout": str(plan.visibility_timeout_seconds),
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(plan.max_receive_count)}
        ),
        "Policy": json.dumps(_queue_policy(queue_arn, plan.bucket)),
    }
    plan.actions.append(
        f"set redrive policy (maxReceiveCount {plan.max_receive_count}) "
        f"and S3 send policy on {plan.queue}"
    )
    if not dry_run:
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)
    _ensure_notification(s3, plan, queue_arn, dry_run)
    plan.queue_url, plan.dlq_url = queue_url, dlq_url
    return plan


def _ensure_queue(
    sqs: Any, name: str, attributes: dict[str, str], plan: WiringPlan, dry_run: bool
) -> str:
    try:
        url: str = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        plan.actions.append(f"queue {name} exists")
        if not dry_run:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        return url
    except ClientError as exc:
        if "NonExistentQueue" not in str(exc.response.get("Error", {}).get("Code", "")):
            raise
    plan.actions.append(f"create queue {name}")
    if dry_run:
        return f"(new queue {name})"
    created: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return created


def _arn(sqs: Any, url: str, name: str, dry_run: bool) -> str:
    if dry_run and url.startswith("(new"):
        return f"arn:aws:sqs:REGION:ACCOUNT:{name}"
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn: str = attrs["Attributes"]["QueueArn"]
    return arn


def _queue_policy(queue_arn: str, bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowS3BucketNotifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }


def _ensure_notification(s3: Any, plan: WiringPlan, queue_arn: str, dry_run: bool) -> None:
    current = s3.get_bucket_notification_configuration(Bucket=plan.bucket)
    current.pop("ResponseMetadata", None)
    ours_id = NOTIFICATION_ID_PREFIX + plan.queue
    others = [c for c in current.get("QueueConfigurations", []) if c.get("Id") != ours_id]
    ours = {"Id": ours_id, "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}
    existing = [c for c in current.get("QueueConfigurations", []) if c.get("Id") == ours_id]
    if (
        existing
        and existing[0].get("QueueArn") == queue_arn
        and existing[0].get("Events") == ours["Events"]
    ):
        plan.actions.append(f"bucket {plan.bucket} already notifies {plan.queue}")
        return
    plan.actions.append(f"make bucket {plan.bucket} notify {plan.queue} of s3:ObjectCreated:*")
    if dry_run:
        return
    configuration = {**current, "QueueConfigurations": [*others, ours]}
    s3.put_bucket_notification_configuration(
        Bucket=plan.bucket, NotificationConfiguration=configuration
    )
