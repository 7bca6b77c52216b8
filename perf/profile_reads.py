"""Where the read time goes: CPU profiles of cloudpacs (py-spy) and FerretDB (Go pprof)
while ab loads one QIDO/WADO URL at a time.

    .venv/bin/python perf/profile_reads.py                 # the 1,000-instance corpus
    .venv/bin/python perf/profile_reads.py --instances 200 # quick
    .venv/bin/python perf/profile_reads.py --only "WADO instance"

A FerretDB (with `-pprof-addr`) and one `cloudpacs serve` are started on loopback, the corpus
is stored over STOW-RS, then for each URL: ab at 16 clients for `--seconds`, with py-spy
sampling the cloudpacs process and a pprof CPU profile of FerretDB over the same window,
plus the CPU seconds each process used per request. Output under perf/out/profile-reads/:
results.json, and per URL the py-spy flame data and `go tool pprof -top` text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench_context import DICOM_ACCEPT, JSON_ACCEPT
from benchlib import (
    FERRETDB,
    OUT,
    REPO,
    VENV_BIN,
    cpu_seconds,
    free_port,
    machine,
    run_ab,
    start_cloudpacs,
    start_ferretdb,
)
from corpus import CorpusParams, ensure_corpus
from phase_ingest import multipart_bodies, stow_clients
from phase_reads import instance_url, qido_queries, typical_study

sys.path.insert(0, str(REPO))
from cloudpacs.embedded import add_id_lookup_indexes

DATABASE = "profile"
CLIENTS = 16
TOP = 25


def profiled_urls(corpus: Any) -> dict[str, tuple[str, str]]:
    """name -> (path under /dicomweb, Accept)."""
    queries = qido_queries(corpus)
    typical = typical_study(corpus)
    series = f"/studies/{typical['study']}/series/{typical['series']}"
    return {
        "QIDO studies?PatientName (wildcard, a scan)": (
            queries["studies?PatientName (wildcard)"],
            JSON_ACCEPT,
        ),
        "QIDO studies?PatientID (exact, study lookup)": (
            queries["studies?PatientID (exact)"],
            JSON_ACCEPT,
        ),
        "QIDO study/instances (member lists)": (queries["study/instances"], JSON_ACCEPT),
        "WADO series metadata (member lists)": (f"{series}/metadata", JSON_ACCEPT),
        "WADO series (directory file store)": (series, DICOM_ACCEPT),
        "WADO instance (directory file store)": (
            instance_url("", typical["instances"][0]),
            DICOM_ACCEPT,
        ),
    }


def pprof_top(profile: Path) -> str:
    done = subprocess.run(
        ["go", "tool", "pprof", "-top", "-cum", f"-nodecount={TOP}", str(FERRETDB), str(profile)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr


def pprof_profile(port: int, seconds: int, target: Path) -> threading.Thread:
    url = f"http://127.0.0.1:{port}/debug/pprof/profile?seconds={seconds}"

    def fetch() -> None:
        with urllib.request.urlopen(url, timeout=seconds + 30) as answer:
            target.write_bytes(answer.read())

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread


def py_spy_top(raw: Path, inclusive: bool = False) -> list[tuple[str, float]]:
    """Share of samples per leaf function (or, `inclusive`, per function anywhere on the
    stack), from py-spy's raw (collapsed stacks) output."""
    shares: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r" \(.*/", " (", frame) for frame in stack.split(";")]
        for frame in set(frames) if inclusive else frames[-1:]:
            shares[frame] += int(count)
        total += int(count)
    return [(name, round(100 * n / total, 1)) for name, n in shares.most_common(TOP)]


def profile_one(
    name: str, url: str, accept: str, pids: dict[str, int], pprof_port: int, folder: Path, s: int
) -> dict[str, Any]:
    stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    raw, pprof = folder / f"{stem}.pyspy.txt", folder / f"{stem}.pprof.pb.gz"
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    spy = subprocess.Popen(
        [
            *(str(VENV_BIN / "py-spy"), "record", "--nonblocking", "-r", "100", "-d", str(s)),
            *("-f", "raw", "-o", str(raw), "-p", str(pids["cloudpacs"])),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    go = pprof_profile(pprof_port, s, pprof)
    result = run_ab(
        url, 100_000, CLIENTS, folder / "ab", headers=[f"Accept: {accept}"], time_limit=s
    )
    spy.wait(timeout=60)
    go.join(timeout=60)
    used = {k: cpu_seconds(pid) - before[k] for k, pid in pids.items()}
    requests = max(result.requests, 1)
    top_go = pprof_top(pprof) if pprof.exists() else "no profile"
    (folder / f"{stem}.pprof-top.txt").write_text(top_go)
    return {
        "name": name,
        "ab": result.as_dict(),
        "cpu_ms_per_request": {k: round(1000 * v / requests, 2) for k, v in used.items()},
        "cloudpacs_top_leaf_functions_pct": py_spy_top(raw) if raw.exists() else [],
        "cloudpacs_top_functions_inclusive_pct": py_spy_top(raw, True) if raw.exists() else [],
        "ferretdb_pprof_top": top_go.splitlines()[: TOP + 6],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--only", default="", help="profile the URLs whose name has this")
    args = parser.parse_args()
    corpus = ensure_corpus(CorpusParams(instances=args.instances, patients=20))
    folder = OUT / "profile-reads"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pprof_port = free_port()
    ferretdb = start_ferretdb(folder / "db", f"-pprof-addr=127.0.0.1:{pprof_port}")
    uri = f"mongodb://127.0.0.1:{ferretdb.port}/"
    try:
        # the file store of the embedded default (a configured MongoDB would mean GridFS)
        store = {"CLOUDPACS_FILE_STORE": "directory"}
        server = start_cloudpacs("serve", folder / "home", uri, DATABASE, store)
        try:
            add_id_lookup_indexes(folder / "db", DATABASE)  # what the embedded mode does
            root = f"{server.base}/dicomweb"
            boundary, bodies = multipart_bodies(corpus.files, 10)
            stats = asyncio.run(
                stow_clients(f"{root}/studies", boundary, bodies, 4, time.perf_counter() + 3600)
            )
            add_id_lookup_indexes(folder / "db", DATABASE)  # collections made by the ingest
            print(f"stored {stats.stored} instances", flush=True)
            pids = {"cloudpacs": server.pid, "ferretdb": ferretdb.pid}
            rows = []
            for name, (path, accept) in profiled_urls(corpus).items():
                if args.only.lower() not in name.lower():
                    continue
                row = profile_one(
                    name, f"{root}{path}", accept, pids, pprof_port, folder, args.seconds
                )
                rows.append(row)
                print(
                    f"{name}: {row['ab']['rps']} req/s, p50 {row['ab']['p50_ms']} ms, "
                    f"CPU ms/request {row['cpu_ms_per_request']}",
                    flush=True,
                )
        finally:
            server.stop()
    finally:
        ferretdb.stop()
    results = {"machine": machine(), "instances": args.instances, "clients": CLIENTS, "rows": rows}
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    print(f"-> {folder / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
