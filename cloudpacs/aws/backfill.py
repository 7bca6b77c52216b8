"""`cloudpacs import s3://bucket/prefix`: ingest objects that predate the notifications.

Resumable: after each listing page (up to 1,000 keys) is done, the last key is saved as a
checkpoint; a rerun starts after it. Idempotent: a page redone after a crash only finds
duplicates.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from cloudpacs.aws.objects import ObjectIngest, RetryLater, S3Object
from cloudpacs.errors import InvalidRequest, Unavailable
from cloudpacs.ingest import Outcome
from cloudpacs.storage.checkpoints import CheckpointStore

RETRIES = 5


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise InvalidRequest(f"not an s3:// URL: {url}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidRequest(f"no bucket in {url}")
    return bucket, prefix


def _pages(s3: Any, bucket: str, prefix: str, start_after: str) -> Iterator[list[S3Object]]:
    paginator = s3.get_paginator("list_objects_v2")
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    for page in paginator.paginate(**kwargs):
        yield [
            S3Object(bucket, item["Key"], item.get("Size"), item.get("ETag"))
            for item in page.get("Contents", [])
        ]


async def backfill(
    url: str,
    s3: Any,
    objects: ObjectIngest,
    checkpoints: CheckpointStore,
    concurrency: int,
    progress: bool = True,
) -> tuple[Counter[str], list[tuple[str, str]]]:
    """Ingest every object under the URL not done by an earlier run; counts and rejections."""
    bucket, prefix = parse_s3_url(url)
    job = f"backfill:{url}"
    start_after = str((await checkpoints.get(job) or {}).get("position", ""))
    counts: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = []
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(unit="object", disable=not progress, desc=url)

    async def one(obj: S3Object) -> None:
        async with semaphore:
            for attempt in range(RETRIES):
                try:
                    result = await objects.ingest(obj)
                    break
                except (RetryLater, Unavailable):
                    if attempt == RETRIES - 1:
                        raise
                    await asyncio.sleep(2**attempt)
        counts[result.outcome.value] += 1
        if result.outcome is Outcome.REJECTED:
            rejected.append((obj.url, result.reason or "rejected"))
        bar.update()

    pages = _pages(s3, bucket, prefix, start_after)
    no_more: list[S3Object] = []
    while page := await asyncio.to_thread(next, pages, no_more):
        before = Counter(counts)
        await asyncio.gather(*(one(obj) for obj in page))
        await checkpoints.advance(job, page[-1].key, dict(counts - before))
    bar.close()
    return counts, rejected
