"""The SQS ingest daemon: one SqsSource per configured queue, sharing the ingest slots."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudpacs.config import Settings
from cloudpacs.daemon.sqs import SqsOptions, SqsSource
from cloudpacs.ingest import Ingestor
from cloudpacs.metrics import Metrics


class SqsDaemon:
    def __init__(
        self, settings: Settings, sqs: Any, s3: Any, ingestor: Ingestor, metrics: Metrics
    ) -> None:
        self.settings = settings
        per_queue = max(1, settings.ingest_concurrency // max(1, len(settings.sqs_queues)))
        self.sources = [
            SqsSource(
                sqs,
                s3,
                SqsOptions(
                    queue_url=url,
                    wait_seconds=settings.sqs_wait_seconds,
                    visibility_timeout_seconds=settings.sqs_visibility_timeout_seconds,
                    max_object_bytes=settings.max_upload_bytes,
                    tmp_dir=settings.home / "tmp",
                    concurrency=per_queue,
                    retry_base_seconds=settings.sqs_retry_base_seconds,
                    projects=settings.project_rules,
                ),
                ingestor,
                metrics,
            )
            for url in settings.sqs_queues
        ]

    def start(self) -> None:
        for source in self.sources:
            source.start()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop(self.settings.drain_seconds) for s in self.sources))
