"""Watched-folder source: finds files (at start-up and via watchdog), waits until each is
completely written, refuses symlinks and paths escaping the folder, and submits the rest.

A file is ready when its size and mtime have not changed for `settle_seconds`, or soon after
its writer closed it (inotify IN_CLOSE_WRITE) and did not write again. Paths with a component
starting with '.' are skipped: that is how rsync, scp and most uploaders name partial files
(and rsync's --partial-dir).

Only the event loop thread touches `pending`; worker threads just stat files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 0.2
CLOSED_SETTLE_SECONDS = 0.1


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    stable_since: float
    closed: bool = False


@dataclass(frozen=True)
class _Observation:
    """What a worker thread saw of one pending path."""

    gone: bool = False
    size: int = -1
    mtime_ns: int = -1
    problem: str | None = None


class FolderSource:
    def __init__(
        self,
        root: Path,
        submit: Callable[[Path], None],
        refuse: Callable[[Path, str], None],
        settle_seconds: float,
        excluded: tuple[Path, ...] = (),
    ) -> None:
        self.root = root.resolve()
        self.submit = submit
        self.refuse = refuse
        self.settle_seconds = settle_seconds
        self.excluded = tuple(p.resolve() for p in excluded)
        self.pending: dict[Path, _Pending] = {}
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._checker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.root.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        handler = _Handler(self._from_thread, self._dir_from_thread)
        observer.schedule(handler, str(self.root), recursive=True)
        # started before the scan, so nothing written meanwhile is missed
        await asyncio.to_thread(observer.start)  # adds a watch per folder: may take a while
        self._observer = observer
        for path in await asyncio.to_thread(self._scan, self.root):
            self.seen(path)
        self._checker = asyncio.create_task(self._check_forever())
        self._checker.add_done_callback(_report_crash)
        log.info("folder.watching", extra={"root": str(self.root), "found": len(self.pending)})

    async def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 5)
            self._observer = None
        for task in [self._checker, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._checker = None

    def _scan(self, top: Path) -> list[Path]:
        """Files under `top`, and symbolic links to folders (so that they are refused)."""
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            here = Path(dirpath)
            found.extend(here / d for d in dirnames if (here / d).is_symlink())
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".")
                and not (here / d).is_symlink()
                and not self._is_excluded(here / d)
            ]
            found.extend(here / name for name in filenames)
        return found

    def _is_hidden(self, path: Path) -> bool:
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            parts = (path.name,)
        return any(part.startswith(".") for part in parts)

    def _is_excluded(self, path: Path) -> bool:
        return any(path == e or e in path.parents for e in self.excluded)

    def _from_thread(self, path: Path, closed: bool) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.seen, path, closed)

    def _dir_from_thread(self, path: Path) -> None:
        """A directory appeared (e.g. moved in whole): its files may come without events."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn_rescan, path)

    def _spawn_rescan(self, path: Path) -> None:
        task = asyncio.create_task(self._rescan(path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rescan(self, top: Path) -> None:
        for path in await asyncio.to_thread(self._scan, top):
            self.seen(path)

    def seen(self, path: Path, closed: bool = False) -> None:
        """A file appeared or changed: (re)start waiting for it to settle.

        `closed` says its writer just closed it; any later change (a writer that reopened
        it) takes the fast path away again."""
        if self._is_hidden(path) or self._is_excluded(path):
            return
        entry = self.pending.get(path)
        if entry is None:
            self.pending[path] = _Pending(-1, -1, time.monotonic(), closed)
        else:
            entry.closed = closed

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_SECONDS)
            if self.pending:
                observed = await asyncio.to_thread(self._observe, list(self.pending))
                self._decide(observed, time.monotonic())

    def _observe(self, paths: list[Path]) -> list[tuple[Path, _Observation]]:
        """Stat each path (in a worker thread; touches no shared state)."""
        out = []
        for path in paths:
            try:
                st = path.lstat()
            except FileNotFoundError:
                out.append((path, _Observation(gone=True)))
                continue
            except OSError as exc:
                out.append((path, _Observation(problem=f"cannot read the file: {exc.strerror}")))
                continue
            problem = self._problem(path, st)
            out.append((path, _Observation(False, st.st_size, st.st_mtime_ns, problem)))
        return out

    def _decide(self, observed: list[tuple[Path, _Observation]], now: float) -> None:
        for path, seen in observed:
            entry = self.pending.get(path)
            if entry is None:
                continue
            if seen.gone or seen.problem:
                del self.pending[path]
                if seen.problem:
                    self.refuse(path, seen.problem)
            elif (seen.size, seen.mtime_ns) != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns, entry.stable_since = seen.size, seen.mtime_ns, now
            elif now - entry.stable_since >= (
                CLOSED_SETTLE_SECONDS if entry.closed else self.settle_seconds
            ):
                del self.pending[path]
                self.submit(path)

    def _problem(self, path: Path, st: os.stat_result) -> str | None:
        if stat.S_ISLNK(st.st_mode):
            return "symbolic links are refused: copy the file into the watched folder"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            return f"cannot resolve the path: {exc}"
        if self.root not in resolved.parents:
            return "path escapes the watched folder"
        return None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("folder.checker_failed", exc_info=task.exception())


class _Handler(FileSystemEventHandler):
    def __init__(
        self, notify: Callable[[Path, bool], None], notify_dir: Callable[[Path], None]
    ) -> None:
        self.notify = notify
        self.notify_dir = notify_dir

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if isinstance(event, DirMovedEvent):
                self.notify_dir(Path(os.fsdecode(event.dest_path)))
            elif isinstance(event, DirCreatedEvent):
                self.notify_dir(Path(os.fsdecode(event.src_path)))
            return
        if isinstance(event, FileMovedEvent):
            self.notify(Path(os.fsdecode(event.dest_path)), False)
        elif isinstance(event, FileClosedEvent):
            self.notify(Path(os.fsdecode(event.src_path)), True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self.notify(Path(os.fsdecode(event.src_path)), False)
