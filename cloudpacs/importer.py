"""`cloudpacs import PATH...`: bulk import of files and folders, with a progress bar and a
summary. Source files are left untouched (this is a copy, not a move)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cloudpacs.errors import Unavailable
from cloudpacs.ingest import Ingestor, Outcome, Source

RETRIES_WHEN_UNAVAILABLE = 5


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[Path, str]] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"stored: {self.counts['stored']}  duplicate: {self.counts['duplicate']}  "
            f"rejected: {self.counts['rejected']}  failed: {self.counts['failed']}"
        ]
        for path, reason in self.rejected:
            lines.append(f"  rejected {path}: {reason}")
        return "\n".join(lines)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for dirpath, _, filenames in os.walk(path, followlinks=False):
                for name in sorted(filenames):
                    yield Path(dirpath) / name
        else:
            yield path


async def import_paths(
    ingestor: Ingestor,
    paths: list[Path],
    concurrency: int,
    progress: bool = True,
    project: str | None = None,
) -> ImportSummary:
    files = await asyncio.to_thread(lambda: list(iter_files(paths)))
    summary = ImportSummary()
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(files), unit="file", disable=not progress)

    async def one(path: Path) -> None:
        async with semaphore:
            for attempt in range(RETRIES_WHEN_UNAVAILABLE):
                try:
                    result = await ingestor.ingest(
                        path, Source("import", str(path), project=project)
                    )
                    break
                except Unavailable as exc:
                    if attempt == RETRIES_WHEN_UNAVAILABLE - 1:
                        summary.counts["failed"] += 1
                        summary.rejected.append((path, f"database unavailable: {exc}"))
                        bar.update()
                        return
                    await asyncio.sleep(2**attempt)
        summary.counts[result.outcome.value] += 1
        if result.outcome is Outcome.REJECTED:
            summary.rejected.append((path, result.reason or "rejected"))
        bar.update()

    await asyncio.gather(*(one(path) for path in files))
    bar.close()
    return summary
