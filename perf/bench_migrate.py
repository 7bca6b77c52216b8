"""Benchmark of `cloudpacs migrate --from-dicomweb` from a real Orthanc on this machine.

    .venv/bin/python perf/bench_migrate.py                      # 1,000 instances, concurrency 8
    .venv/bin/python perf/bench_migrate.py --instances 300 --concurrency 2 8 16

Orthanc (Debian packages orthanc + orthanc-dicomweb) is started on a free loopback port and
loaded with the perf corpus over its REST API; then, for each concurrency, a fresh
`cloudpacs migrate` on its embedded FerretDB (as `make run`) copies it all, and a second run
(nothing to copy, everything verified) is timed too. Processes are stopped by PID.
Results: perf/out/results-migrate.json (or --out) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchlib import OUT, VENV_BIN, cpu_seconds, machine, running
from corpus import CorpusParams, ensure_corpus
from orthanc_server import DICOMWEB_ROOT, orthanc_post_file, orthanc_versions, start_orthanc


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def disk_bytes(folder: Path) -> int:
    """Bytes allocated on disk under `folder` (what `du` counts)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def migrate(root: str, home: Path, concurrency: int, report: Path) -> dict[str, Any]:
    """One `cloudpacs migrate` run on its embedded FerretDB: wall and CPU seconds, report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPACS_")}
    argv = [
        str(VENV_BIN / "cloudpacs"),
        "migrate",
        "--home",
        str(home),
        "--from-dicomweb",
        root,
        "--concurrency",
        str(concurrency),
        "--report",
        str(report),
        "--no-progress",
    ]
    cpu0, started = children_cpu(), time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"migrate exited {done.returncode}: {done.stdout}{done.stderr[-2000:]}")
    totals = json.loads(report.read_text())["totals"]
    return {
        "wall_seconds": round(wall, 2),
        "migrate_seconds": json.loads(report.read_text())["seconds"],
        # cloudpacs and its embedded FerretDB (its child, waited for), start-up included
        "cloudpacs_and_ferretdb_cpu_seconds": round(children_cpu() - cpu0, 1),
        "totals": totals,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8])
    parser.add_argument("--out", type=Path, default=OUT / "results-migrate.json")
    args = parser.parse_args()
    corpus = ensure_corpus(CorpusParams(args.instances, 20, 7))
    run_dir = OUT / f"migrate-{time.strftime('%Y%m%d-%H%M%S')}"
    results: dict[str, Any] = {
        "machine": machine(),
        "corpus": {"instances": len(corpus.instances), "bytes": corpus.total_bytes},
        "levels": [],
    }
    with running(start_orthanc(run_dir / "orthanc")) as server:
        results["versions"] = orthanc_versions(server)
        log(f"Orthanc {results['versions']}: loading {len(corpus.files)} instances (4 threads)")
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: orthanc_post_file(server, p.read_bytes()), corpus.files))
        load = time.perf_counter() - started
        results["orthanc_load"] = {
            "seconds": round(load, 2),
            "instances_per_s": round(len(corpus.files) / load, 1),
        }
        results["orthanc_disk_bytes"] = disk_bytes(run_dir / "orthanc" / "storage") + disk_bytes(
            run_dir / "orthanc" / "index"
        )
        root = f"{server.base}{DICOMWEB_ROOT}"
        for concurrency in args.concurrency:
            home = run_dir / f"cloudpacs-c{concurrency}"
            log(f"migrate, concurrency {concurrency}: fresh archive")
            orthanc0 = cpu_seconds(server.pid)
            first = migrate(root, home, concurrency, home / "first.json")
            first["orthanc_cpu_seconds"] = round(cpu_seconds(server.pid) - orthanc0, 1)
            log(f"  -> {first['totals']['instances_per_s']} instances/s; rerun")
            again = migrate(root, home, concurrency, home / "again.json")
            # GridFS chunks, documents, indexes: the embedded FerretDB's SQLite files
            first["cloudpacs_disk_bytes"] = disk_bytes(home / "db")
            results["levels"].append({"concurrency": concurrency, "first": first, "again": again})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    return 0


def report(results: dict[str, Any]) -> str:
    corpus = results["corpus"]
    lines = [
        f"corpus: {corpus['instances']} instances, {corpus['bytes'] / 1e6:.0f} MB; "
        f"Orthanc {results['versions']['orthanc']} loaded it at "
        f"{results['orthanc_load']['instances_per_s']} instances/s; on disk: Orthanc "
        f"{results['orthanc_disk_bytes'] / 1e6:.0f} MB (files + SQLite index)",
        "concurrency | instances/s | MB/s | seconds | cloudpacs+FerretDB CPU-s | Orthanc CPU-s"
        " | rerun seconds | cloudpacs on disk MB",
    ]
    for level in results["levels"]:
        first, again = level["first"], level["again"]
        t = first["totals"]
        mb_s = t["fetched_bytes"] / 1e6 / first["migrate_seconds"]
        lines.append(
            f"{level['concurrency']} | {t['instances_per_s']} | {mb_s:.1f} | "
            f"{first['migrate_seconds']} | {first['cloudpacs_and_ferretdb_cpu_seconds']} | "
            f"{first['orthanc_cpu_seconds']} | {again['migrate_seconds']} | "
            f"{first['cloudpacs_disk_bytes'] / 1e6:.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
