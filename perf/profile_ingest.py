"""Where ingest time goes, two ways.

1. Sampling: `cloudpacs run` ingests the corpus from its watched inbox while py-spy samples
   it (on-CPU Python stacks, 100 Hz); /proc gives the CPU split cloudpacs vs FerretDB.
2. Stage timing: the same Ingestor, in this process, imports a subset one file at a time
   (concurrency 1, so the stages add up to the wall time) with every pymongo command timed
   by a CommandListener and the parse (in a parser process) and the store's steps wrapped.
   py-spy samples the server only: with parse_workers > 0 the parse runs in child processes
   (sample them with `py-spy record --subprocesses`, or set CLOUDPACS_PARSE_WORKERS=0).

    .venv/bin/pip install py-spy
    .venv/bin/python perf/profile_ingest.py [--instances 1200] [--staged 300]

Writes perf/out/profile-ingest.json and prints both summaries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import OUT, REPO, VENV_BIN, ResourceWatch, start_archive, start_ferretdb
from corpus import CorpusParams, ensure_corpus
from pymongo import MongoClient, monitoring

from cloudpacs.config import Settings
from cloudpacs.embedded import add_id_lookup_indexes
from cloudpacs.importer import import_paths
from cloudpacs.parsing import ProcessParser
from cloudpacs.runtime import open_runtime
from cloudpacs.storage.instances import InstanceStore

# py-spy frames look like "function (path/to/file.py:123)"; first matching rule wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("sha256 of the file", ("sha256_of",)),
    ("pydicom dcmread", ("dcmread",)),
    ("DICOM JSON + search keys", ("dataset_to_json", "search_keys", "_pixel_layout")),
    ("GridFS upload (pymongo, bson)", ("upload_file", "upload_bytes")),
    ("instance document build/insert", ("instance_document", "insert (cloudpacs")),
    ("rollups + journal (pymongo)", ("apply_rollups", "settle_uploads", "_journal", "existing")),
    ("folder watch + file disposal", ("watchdog", "daemon/folder.py", "daemon/runner.py")),
    ("pymongo/bson other", ("pymongo", "bson")),
    ("asyncio / aiohttp machinery", ("asyncio", "aiohttp")),
]


# Leaf frames that are waits, not work (py-spy cannot always tell a GIL-free wait from work).
IDLE_LEAVES = (
    "_worker (",
    "Condition.wait (",
    "EpollSelector.select (",
    "InotifyFD._check_inotify_fd (",
    "Event.wait (",
    "_wait_for_tstate_lock (",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- 1. py-spy on the server ------------------------------------------------------------
def wait_ingested(uri: str, database: str, expected: int, inbox: Path, timeout: float) -> float:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout:
            stored = client[database]["instances"].estimated_document_count()
            if stored >= expected and not any(p.is_file() for p in inbox.rglob("*")):
                return time.perf_counter() - started
            time.sleep(0.25)
    finally:
        client.close()
    raise TimeoutError("ingest did not finish")


def lookup_costs(uri: str, database: str) -> dict[str, float]:
    """ms for find_one by _id of the first, middle and last stored instance and of a missing
    one: FerretDB 1.x on SQLite scans the table even for _id, so cost follows row position."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        instances = client[database]["instances"]
        ids = [d["_id"] for d in instances.find({}, {"_id": 1})]
        probes = {
            "first row": ids[0],
            "middle row": ids[len(ids) // 2],
            "last row": ids[-1],
            "missing": "9.9.9",
        }
        out = {}
        for label, key in probes.items():
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                instances.find_one({"_id": key}, {"sha256": 1})
                best = min(best, time.perf_counter() - started)
            out[f"find_one _id {label}"] = round(1000 * best, 1)
        plan = client[database].command(
            "explain", {"find": "instances", "filter": {"_id": ids[-1]}}
        )
        out["sqlite plan for _id"] = plan.get("queryPlanner", {}).get("Plan")
    finally:
        client.close()
    return out


def py_spy(pid: int, raw: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` at 100 Hz, only the thread holding the GIL (on-CPU Python)."""
    argv = [
        str(VENV_BIN / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "100",
        "--gil",
        "--format",
        "raw",
        "--output",
        str(raw),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sample_server(files_dir: Path, expected: int, work: Path) -> dict[str, Any]:
    """`cloudpacs run` on its embedded FerretDB (as `make run`) ingesting from its inbox."""
    raw = OUT / "py-spy-ingest.raw.txt"
    home = work / "home"
    archive = start_archive("run", home, "profile")
    try:
        spy = py_spy(archive.server.pid, raw)
        time.sleep(1.0)
        with ResourceWatch(archive.pids) as watch:
            shutil.copytree(files_dir, home / "inbox", dirs_exist_ok=True)
            seconds = wait_ingested(archive.db_uri, "profile", expected, home / "inbox", 900)
        os.kill(spy.pid, signal.SIGINT)
        spy.wait(60)
        lookups = lookup_costs(archive.db_uri, "profile")
    finally:
        archive.stop()
    return {
        "instances": expected,
        "lookups_ms": lookups,
        "seconds": round(seconds, 2),
        "instances_per_s": round(expected / seconds, 1),
        "resources": watch.result,
        **summarize_stacks(parse_raw(raw)),
    }


def ferretdb_uri(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/"


def parse_raw(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def category(stack: str) -> str:
    for name, needles in CATEGORIES:
        if any(needle in stack for needle in needles):
            return name
    return "other"


def summarize_stacks(stacks: Counter[str]) -> dict[str, Any]:
    total = sum(c for k, c in stacks.items() if not k.split(";")[-1].startswith(IDLE_LEAVES))
    total = total or 1
    by_category: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for stack, count in stacks.items():
        if stack.split(";")[-1].startswith(IDLE_LEAVES):
            continue
        by_category[category(stack)] += count
        self_time[stack.split(";")[-1]] += count
    return {
        "samples": total,
        "categories_percent": {k: round(100 * v / total, 1) for k, v in by_category.most_common()},
        "top_self_percent": {k: round(100 * v / total, 1) for k, v in self_time.most_common(15)},
    }


# ---- 2. stage timing in process ---------------------------------------------------------
class CommandTimer(monitoring.CommandListener):
    """Seconds per (command, collection) as seen by the client: FerretDB's work + transport."""

    def __init__(self) -> None:
        self.pending: dict[tuple[int, int], tuple[str, float]] = {}
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.counts: Counter[str] = Counter()
        self.events: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        name = f"{event.command_name} {target if isinstance(target, str) else ''}".strip()
        with self.lock:
            self.pending[(event.request_id, event.operation_id or 0)] = (name, time.perf_counter())

    def _finish(
        self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent
    ) -> None:
        with self.lock:
            name, _ = self.pending.pop((event.request_id, event.operation_id or 0), ("?", 0.0))
            self.seconds[name] += event.duration_micros / 1e6
            self.counts[name] += 1
            self.events.append((name, event.duration_micros / 1e3))

    def growth(self, fraction: float = 0.2) -> dict[str, dict[str, float]]:
        """Mean ms per command in the first and the last `fraction` of the run: which
        commands get slower as the collections grow."""
        cut = max(1, int(len(self.events) * fraction))
        out: dict[str, dict[str, float]] = {}
        for label, events in (("first_ms", self.events[:cut]), ("last_ms", self.events[-cut:])):
            totals: defaultdict[str, list[float]] = defaultdict(list)
            for name, ms in events:
                totals[name].append(ms)
            for name, values in totals.items():
                out.setdefault(name, {})[label] = round(sum(values) / len(values), 2)
        return out

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event)


@dataclass
class StageTimer:
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.seconds[name] += seconds

    def wrap_sync(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed

    def wrap_async(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed


STORE_STEPS = ("existing", "upload_file", "insert", "settle_uploads", "apply_rollups")


def instrument(stages: StageTimer) -> None:
    ProcessParser.parse = stages.wrap_async(  # type: ignore[method-assign]
        "parse (worker process: sha256 + dcmread + JSON)", ProcessParser.parse
    )
    for step in STORE_STEPS:
        setattr(
            InstanceStore, step, stages.wrap_async(f"store.{step}", getattr(InstanceStore, step))
        )


async def staged_import(files: list[Path], uri: str, home: Path, data_dir: Path) -> dict[str, Any]:
    settings = Settings(home=home, mongo_uri=uri, database="staged", ingest_concurrency=1)
    async with open_runtime(settings, sweep_periodically=False) as runtime:
        # what the embedded mode does at start (cloudpacs.embedded.add_id_lookup_indexes)
        await asyncio.to_thread(add_id_lookup_indexes, data_dir, settings.database)
        started = time.perf_counter()
        summary = await import_paths(runtime.ingestor, files, 1, progress=False)
        wall = time.perf_counter() - started
    return {"wall_seconds": wall, "counts": dict(summary.counts)}


def stage_timing(files: list[Path], work: Path) -> dict[str, Any]:
    timer, stages = CommandTimer(), StageTimer()
    monitoring.register(timer)
    instrument(stages)
    ferretdb_dir = work / "ferretdb-staged"
    ferretdb = start_ferretdb(ferretdb_dir)
    try:
        with ResourceWatch({"ferretdb": ferretdb.pid, "this process": os.getpid()}) as watch:
            outcome = asyncio.run(
                staged_import(files, ferretdb_uri(ferretdb.port), work / "staged", ferretdb_dir)
            )
    finally:
        ferretdb.stop()
    n, wall = len(files), outcome["wall_seconds"]
    per_instance = {
        k: round(1000 * v / n, 2) for k, v in sorted(stages.seconds.items(), key=lambda kv: -kv[1])
    }
    commands = {
        name: {
            "calls_per_instance": round(timer.counts[name] / n, 2),
            "ms_per_instance": round(1000 * secs / n, 2),
            "percent_of_wall": round(100 * secs / wall, 1),
        }
        for name, secs in sorted(timer.seconds.items(), key=lambda kv: -kv[1])
    }
    return {
        "instances": n,
        "wall_seconds": round(wall, 2),
        "instances_per_s": round(n / wall, 1),
        "ms_per_instance": round(1000 * wall / n, 2),
        "counts": outcome["counts"],
        "stages_ms_per_instance": per_instance,
        "pymongo_commands": commands,
        "command_growth": timer.growth(),
        "resources": watch.result,
    }


def print_summary(result: dict[str, Any]) -> None:
    sampled, staged = result["sampled"], result["staged"]
    print(
        f"\n1. py-spy on `cloudpacs run`: {sampled['instances']} instances in "
        f"{sampled['seconds']} s ({sampled['instances_per_s']}/s), {sampled['samples']} samples"
    )
    for name, res in sampled["resources"].items():
        if isinstance(res, dict) and "cpu_percent_of_one_core" in res:
            cpu, share = res["cpu_seconds"], res["cpu_percent_of_one_core"]
            print(f"   {name}: {cpu} CPU-s ({share}% of a core)")
    others = sampled["resources"].get("other_processes", {})
    print(f"   other users' processes meanwhile: {others.get('cpu_seconds', '?')} CPU-s")
    for name, ms in sampled.get("lookups_ms", {}).items():
        print(f"   {name}: {ms}")
    print("   on-CPU share of the cloudpacs process by category:")
    for name, pct in sampled["categories_percent"].items():
        print(f"     {pct:5.1f}%  {name}")
    print("   top self time:")
    for name, pct in sampled["top_self_percent"].items():
        print(f"     {pct:5.1f}%  {name[:110]}")
    print(
        f"\n2. staged import, concurrency 1: {staged['instances']} instances, "
        f"{staged['ms_per_instance']} ms each ({staged['instances_per_s']}/s)"
    )
    for name, ms in staged["stages_ms_per_instance"].items():
        print(f"   {ms:8.2f} ms  {name}")
    print("   pymongo commands (client-side duration):")
    for name, c in staged["pymongo_commands"].items():
        print(
            f"   {c['ms_per_instance']:8.2f} ms  {c['percent_of_wall']:5.1f}%  "
            f"{c['calls_per_instance']:5.2f} calls  {name}"
        )
    print("   mean ms per call, first 20% -> last 20% of the run:")
    for name, g in staged["command_growth"].items():
        print(f"   {g.get('first_ms', 0):8.2f} -> {g.get('last_ms', 0):8.2f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1200)
    parser.add_argument("--staged", type=int, default=300, help="instances for stage timing")
    parser.add_argument("--out", type=Path, default=OUT / "profile-ingest.json")
    parser.add_argument("--report", action="store_true", help="only print an existing --out")
    args = parser.parse_args()
    if args.report:
        print_summary(json.loads(args.out.read_text()))
        return 0
    corpus = ensure_corpus(CorpusParams(instances=args.instances))
    work = OUT / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        log(f"py-spy sampling of a folder ingest of {len(corpus.instances)} instances")
        sampled = sample_server(corpus.folder, len(corpus.instances), work)
        log(f"stage timing of an in-process import of {args.staged} instances")
        staged = stage_timing(corpus.files[: args.staged], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"corpus": str(corpus.folder.relative_to(REPO)), "sampled": sampled, "staged": staged}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
