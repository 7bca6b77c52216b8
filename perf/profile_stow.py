"""Where the STOW-RS time goes: CPU per instance of each process, FerretDB's Go profile,
py-spy of cloudpacs, and the database commands each instance costs.

    .venv/bin/python perf/profile_stow.py                  # 16 clients, 300 instances
    .venv/bin/python perf/profile_stow.py --instances 1000 --clients 4

A FerretDB (with `-pprof-addr`) and one `cloudpacs serve` (directory store, the `_id`
lookup indexes added as the embedded default adds them) are started on loopback. A warm-up
request goes first; then the rest of the instances are stored over STOW-RS (10 per request)
while py-spy samples cloudpacs and pprof samples FerretDB. A second, smaller run on a
FerretDB logging at debug level counts the commands by collection and filter shape.
Output: perf/out/profile-stow/results.json, with the raw profiles beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    OUT,
    REPO,
    VENV_BIN,
    all_cpu,
    free_port,
    machine,
    start_archive,
    start_ferretdb,
)
from corpus import CorpusParams, ensure_corpus
from phase_ingest import multipart_bodies, stow_clients
from profile_reads import pprof_profile, pprof_top, py_spy_top

sys.path.insert(0, str(REPO))
from cloudpacs.embedded import add_id_lookup_indexes

DATABASE = "profile"
PER_REQUEST = 10
STORE = {"CLOUDPACS_FILE_STORE": "directory"}  # the embedded default's file store
# one logged request: its command (first key), the collection and the filter, if any
REQUEST = re.compile(
    r'Request message:.*?\\"Document\\": \{\\n\s*\\"(\w+)\\": (\\"[^\\]*\\"|[^,]*),(.*?)\\"\$db'
)
FILTER = re.compile(r'\\"(?:filter|q|query)\\": (\{[^}]*\})')
VALUE = re.compile(r'"[0-9a-f.]{12,}"|ObjectId\([^)]*\)|Binary\([^)]*\)|\d{4}-\d\d-\d\dT[\d:.Z]+')


def stow(
    url: str, files: Sequence[Path], clients: int, after_warm_up: Callable[[], None] = lambda: None
) -> tuple[int, float]:
    """(stored, seconds) for `files`, after one warm-up request of the first ones (then
    `after_warm_up` is called)."""
    boundary, bodies = multipart_bodies(files, PER_REQUEST)
    asyncio.run(stow_clients(url, boundary, bodies[:1], 1, time.perf_counter() + 60))
    after_warm_up()
    started = time.perf_counter()
    stats = asyncio.run(stow_clients(url, boundary, bodies[1:], clients, started + 3600))
    return stats.stored, time.perf_counter() - started


def command_shapes(log: str) -> Counter[str]:
    """Commands by "command collection filter", with the values left out."""
    shapes: Counter[str] = Counter()
    for match in REQUEST.finditer(log):
        command, collection, rest = match.groups()
        shape = f"{command} {collection.strip(chr(92) + chr(34))}"
        found = FILTER.search(rest)
        if found:
            text = re.sub(r"\\n\s*", " ", found.group(1)).replace('\\"', '"')
            shape += " " + VALUE.sub("X", text)
        shapes[shape] += 1
    return shapes


def profiled_run(files: Sequence[Path], clients: int, folder: Path) -> dict[str, Any]:
    pprof_port = free_port()
    ferretdb = start_ferretdb(folder / "db", f"-pprof-addr=127.0.0.1:{pprof_port}")
    try:
        archive = start_archive("serve", folder / "home", DATABASE, ferretdb, STORE)
        try:
            add_id_lookup_indexes(folder / "db", DATABASE)
            url = f"{archive.server.base}/dicomweb/studies"
            pids = {"cloudpacs": archive.server.pid, "ferretdb": ferretdb.pid}
            raw, pprof = folder / "cloudpacs.pyspy.txt", folder / "ferretdb.pprof.pb.gz"
            spy = subprocess.Popen(
                [
                    *(str(VENV_BIN / "py-spy"), "record", "--gil", "-r", "100", "-d", "8"),
                    *("-f", "raw", "-o", str(raw), "-p", str(pids["cloudpacs"])),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            go = pprof_profile(pprof_port, 8, pprof)
            before = all_cpu()
            stored, seconds = stow(url, files, clients)
            after = all_cpu()
            spy.wait(timeout=60)
            go.join(timeout=60)
        finally:
            archive.stop()
    finally:
        ferretdb.stop()
    cpu = {
        f"{name} {pid}": round(1000 * (used - before[pid][1]) / max(stored, 1), 2)
        for pid, (_, used, name) in after.items()
        if pid in before and used - before[pid][1] > 0.05
    }
    return {
        "stored": stored,
        "instances_per_s": round(stored / seconds, 1),
        "cpu_ms_per_instance": cpu,
        "ferretdb_pprof_top": pprof_top(pprof).splitlines() if pprof.exists() else [],
        "cloudpacs_gil_inclusive_pct": py_spy_top(raw, True) if raw.exists() else [],
    }


def counted_run(files: Sequence[Path], clients: int, folder: Path) -> dict[str, Any]:
    ferretdb = start_ferretdb(folder / "db-debug", "--log-level=debug")
    try:
        archive = start_archive("serve", folder / "home-debug", DATABASE, ferretdb, STORE)
        try:
            add_id_lookup_indexes(folder / "db-debug", DATABASE)
            log = folder / "db-debug" / "ferretdb.log"
            marks: list[int] = []

            def mark() -> None:  # where the measured requests' log lines start
                time.sleep(1)
                marks.append(log.stat().st_size)

            url = f"{archive.server.base}/dicomweb/studies"
            stored, _ = stow(url, files, clients, mark)
            time.sleep(1)
        finally:
            archive.stop()
    finally:
        ferretdb.stop()
    with log.open(errors="replace") as text:
        text.seek(marks[0])
        shapes = command_shapes(text.read())
    total = sum(shapes.values())
    return {
        "stored": stored,
        "commands": total,
        "commands_per_instance": round(total / max(stored, 1), 2),
        "by_shape": dict(shapes.most_common()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--counted", type=int, default=180, help="instances of the counted run")
    args = parser.parse_args()
    # the benchmark's corpus (perf/bench_core.py), unless more instances are asked for
    corpus = ensure_corpus(CorpusParams(instances=max(1000, args.instances, args.counted)))
    folder = OUT / "profile-stow"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    profiled = profiled_run(corpus.files[: args.instances], args.clients, folder)
    print(f"{profiled['instances_per_s']} instances/s; CPU ms per instance:", flush=True)
    print(json.dumps(profiled["cpu_ms_per_instance"], indent=1), flush=True)
    counted = counted_run(corpus.files[: args.counted], args.clients, folder)
    print(f"{counted['commands_per_instance']} commands per instance:", flush=True)
    for shape, n in counted["by_shape"].items():
        print(f"  {n:5d} {shape}")
    results = {
        "machine": machine(),
        "clients": args.clients,
        "instances_per_request": PER_REQUEST,
        "profiled": profiled,
        "counted": counted,
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    print(f"-> {folder / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
