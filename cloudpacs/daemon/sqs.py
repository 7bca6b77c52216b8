"""SQS source: S3 event notifications -> objects downloaded -> the one ingest.

At-least-once delivery made exactly-once-visible:
- a message is deleted only after every object it names is stored, a duplicate, or
  definitively rejected (recorded in `rejections`);
- transient failures (database down, S3 5xx/throttling/timeouts) leave the message: its
  visibility is set to a backoff delay, and after the queue's maxReceiveCount its redrive
  policy moves it to the dead-letter queue;
- never more messages in flight than free ingest slots; long work keeps its message
  invisible with a heartbeat; on stop, unfinished messages are made visible again at once.
Redelivery and several daemons on one queue are safe: ingest is idempotent on the SOP UID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloudpacs.aws.objects import ObjectIngest, RetryLater, S3Object
from cloudpacs.daemon.s3events import parse_message
from cloudpacs.errors import Unavailable
from cloudpacs.ingest import Ingestor, Outcome, Source
from cloudpacs.metrics import Metrics
from cloudpacs.projects import ProjectRules

log = logging.getLogger(__name__)

MAX_SQS_BATCH = 10  # ReceiveMessage MaxNumberOfMessages limit (SQS API reference)
MAX_VISIBILITY_SECONDS = 43_200  # 12 hours, the SQS maximum
RETRY_MAX_SECONDS = 900
RECEIVE_ERROR_BACKOFF_SECONDS = 2.0
QUEUE_DEPTH_INTERVAL_SECONDS = 15.0
MAX_OUTAGE_PAUSE_SECONDS = 60.0


@dataclass(frozen=True)
class SqsOptions:
    queue_url: str
    wait_seconds: int = 20
    visibility_timeout_seconds: int = 300
    max_object_bytes: int = 4 * 1024**3
    tmp_dir: Path = Path(tempfile.gettempdir())
    concurrency: int = 8
    retry_base_seconds: float = 5.0
    projects: ProjectRules | None = None


class SqsSource:
    def __init__(
        self, sqs: Any, s3: Any, options: SqsOptions, ingestor: Ingestor, metrics: Metrics
    ) -> None:
        self.sqs = sqs
        self.s3 = s3
        self.options = options
        self.ingestor = ingestor
        self.metrics = metrics
        self.objects = ObjectIngest(
            s3, ingestor, options.tmp_dir, options.max_object_bytes, "sqs", options.projects
        )
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._depth_task: asyncio.Task[None] | None = None
        self._paused_until = 0.0  # while the database is down, receive nothing
        self._outage_seconds = 0.0
        self._probing = False

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self.options.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._loop_task = asyncio.create_task(self._receive_forever())
        self._depth_task = asyncio.create_task(self._report_depth_forever())

    async def stop(self, grace_seconds: float) -> None:
        """Stop receiving; give in-flight messages `grace_seconds`, then release the rest."""
        self._stopping.set()
        self._slot_freed.set()
        if self._depth_task is not None:
            self._depth_task.cancel()
        deadline = time.monotonic() + grace_seconds
        if self._loop_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop_task, max(0.1, deadline - time.monotonic()))
        pending = list(self.inflight.values())
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        for task in list(self.inflight.values()):
            task.cancel()  # each releases its message (visibility 0) as it unwinds
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- receiving --------------------------------------------------------------------
    async def _receive_forever(self) -> None:
        while not self._stopping.is_set():
            pause = self._paused_until - time.monotonic()
            if pause > 0:  # the database is down: receiving now would only burn retries
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                continue
            free = self.options.concurrency - len(self.inflight)
            if self._probing:  # after an outage, one message at a time until one succeeds
                free = 0 if self.inflight else 1
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                messages = await asyncio.to_thread(self._receive, min(MAX_SQS_BATCH, free))
            except (BotoCoreError, ClientError) as exc:
                log.warning("sqs.receive_failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(RECEIVE_ERROR_BACKOFF_SECONDS)
                continue
            for message in messages:
                if self._stopping.is_set():
                    await self._release(message["ReceiptHandle"])
                    continue
                self._track(message)

    def _receive(self, count: int) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.options.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=self.options.wait_seconds,
            VisibilityTimeout=self.options.visibility_timeout_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def _track(self, message: dict[str, Any]) -> None:
        self.metrics.sqs_messages.labels("received").inc()
        sent = message.get("Attributes", {}).get("SentTimestamp")
        if sent:
            self.metrics.sqs_message_age_seconds.observe(max(0.0, time.time() - int(sent) / 1000))
        receipt = message["ReceiptHandle"]
        task = asyncio.create_task(self._handle(message))
        self.inflight[receipt] = task
        self.metrics.sqs_in_flight.inc()

        def done(_: asyncio.Task[None]) -> None:
            self.inflight.pop(receipt, None)
            self.metrics.sqs_in_flight.dec()
            self._slot_freed.set()

        task.add_done_callback(done)

    # ---- one message ------------------------------------------------------------------
    async def _handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        parsed = parse_message(message.get("Body", ""))
        if parsed.ignored:
            log.info("sqs.ignored", extra={"reason": parsed.ignored})
            await self._delete(receipt)
            return
        heartbeat = asyncio.create_task(self._keep_invisible(receipt))
        try:
            if parsed.invalid:
                name = f"sqs message {message.get('MessageId', '?')}"
                rejection = self.ingestor.reject(
                    Source("sqs", name), parsed.invalid, "invalid-message"
                )
                await self._guarded(rejection, receipt, message)
            for obj in parsed.objects:
                await self._guarded(self._ingest_object(obj), receipt, message)
            await self._delete(receipt)
        except RetryLater:
            pass  # _guarded already scheduled the redelivery
        except asyncio.CancelledError:
            await asyncio.shield(self._release(receipt))
            raise
        finally:
            heartbeat.cancel()

    async def _guarded(self, work: Any, receipt: str, message: dict[str, Any]) -> None:
        """Run work; on a transient failure schedule redelivery with backoff, raise RetryLater."""
        try:
            await work
            self._outage_seconds, self._probing = 0.0, False
        except (Unavailable, RetryLater, BotoCoreError) as exc:
            count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            delay = int(min(RETRY_MAX_SECONDS, self.options.retry_base_seconds * 2 ** (count - 1)))
            if isinstance(exc, Unavailable):
                self._outage_seconds = min(
                    MAX_OUTAGE_PAUSE_SECONDS,
                    max(self.options.retry_base_seconds, self._outage_seconds * 2),
                )
                self._paused_until = time.monotonic() + self._outage_seconds
                self._probing = True
                delay = max(delay, int(self._outage_seconds))
            log.warning(
                "sqs.retry_later",
                extra={"error": str(exc)[:200], "receive_count": count, "delay_seconds": delay},
            )
            self.metrics.sqs_messages.labels("retried").inc()
            await self._set_visibility(receipt, delay)
            raise RetryLater(str(exc)) from exc

    async def _ingest_object(self, obj: S3Object) -> None:
        result = await self.objects.ingest(obj)
        if result.outcome is Outcome.STORED and obj.event_time is not None:
            latency = (datetime.now(UTC) - obj.event_time).total_seconds()
            self.metrics.event_to_stored_seconds.observe(max(0.0, latency))

    # ---- message bookkeeping ----------------------------------------------------------
    async def _keep_invisible(self, receipt: str) -> None:
        period = max(1.0, self.options.visibility_timeout_seconds / 2)
        while True:
            await asyncio.sleep(period)
            await self._set_visibility(receipt, self.options.visibility_timeout_seconds)

    async def _delete(self, receipt: str) -> None:
        try:
            await asyncio.to_thread(
                self.sqs.delete_message, QueueUrl=self.options.queue_url, ReceiptHandle=receipt
            )
            self.metrics.sqs_messages.labels("deleted").inc()
        except (BotoCoreError, ClientError) as exc:
            # the message comes back and is processed again: harmless, ingest is idempotent
            log.warning("sqs.delete_failed", extra={"error": type(exc).__name__})

    async def _release(self, receipt: str) -> None:
        await self._set_visibility(receipt, 0)
        self.metrics.sqs_messages.labels("released").inc()

    async def _set_visibility(self, receipt: str, seconds: int) -> None:
        try:
            await asyncio.to_thread(
                self.sqs.change_message_visibility,
                QueueUrl=self.options.queue_url,
                ReceiptHandle=receipt,
                VisibilityTimeout=min(seconds, MAX_VISIBILITY_SECONDS),
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("sqs.visibility_failed", extra={"error": type(exc).__name__})

    async def _report_depth_forever(self) -> None:
        while True:
            await self.report_queue_depth()
            await asyncio.sleep(QUEUE_DEPTH_INTERVAL_SECONDS)

    async def report_queue_depth(self) -> None:
        """Queue lag for the metrics: messages waiting to be received."""
        try:
            attrs = await asyncio.to_thread(
                self.sqs.get_queue_attributes,
                QueueUrl=self.options.queue_url,
                AttributeNames=["ApproximateNumberOfMessages"],
            )
        except (BotoCoreError, ClientError):
            return
        depth = int(attrs.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
        self.metrics.sqs_queue_messages.labels(self.options.queue_url.rsplit("/", 1)[-1]).set(depth)
