"""The cost of authentication and the audit trail alone, on today's code: STOW-RS ingest,
QIDO-RS study searches and WADO-RS instance retrievals against `cloudpacs serve` served open
and secured (an API token required, every request and every stored instance audited), on
one FerretDB.

Rounds run in ABBA order (open, secured, secured, open), that sequence `--repeats` times.
Every round gets a fresh database and ingests the same corpus, so each mode ingests the same
instances and reads an archive of the same size; the spread between the rounds of one mode is
the machine's noise, and each ABBA block gives one secured/open ratio. CPU milliseconds per
request (cloudpacs + FerretDB) are reported beside throughput: they move far less with other
load on the machine.

    .venv/bin/python perf/bench_auth_overhead.py [--instances 120] [--requests 600] [--repeats 2]

Results: perf/results/auth-overhead.json (every round, per mode mean/min/max, the ratios) and
a table on stdout; perf/RESULTS.md keeps them. (perf/bench_security.py compares with the
code from before issue #5 instead.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_context import DICOM_ACCEPT, JSON_ACCEPT
from bench_security import cpu_ms_per, stow
from benchlib import (
    OUT,
    REPO,
    Server,
    cpu_seconds,
    create_token,
    free_port,
    machine,
    run_ab,
    spawn,
    start_ferretdb,
    when_ready,
)
from corpus import CorpusParams, ensure_corpus
from pymongo import MongoClient

RESULTS = REPO / "perf" / "results" / "auth-overhead.json"
SECURED = {"CLOUDPACS_AUTH_REQUIRED": "true"}
MODES = ("open", "secured")
ABBA = ("open", "secured", "secured", "open")
STOW_CLIENTS = 4
READ_CLIENTS = 16
# figure -> True when higher is better (for the table's wording only)
FIGURES = {
    "stow_instances_per_s": True,
    "stow_cpu_ms_per_instance": False,
    "qido_rps": True,
    "qido_cpu_ms_per_request": False,
    "qido_p50_ms": False,
    "wado_rps": True,
    "wado_cpu_ms_per_request": False,
    "wado_p50_ms": False,
}


def serve(home: Path, uri: str, database: str, env: dict[str, str]) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "cloudpacs", "serve", "--home", str(home)]
    argv += ["--http", f"127.0.0.1:{port}"]
    env = {"CLOUDPACS_MONGO_URI": uri, "CLOUDPACS_DATABASE": database, **env}
    return when_ready(spawn("cloudpacs", argv, port, home / "serve.log", env))


def one_round(
    mode: str, index: int, ferret: Server, files: list[Path], work: Path, requests: int
) -> dict[str, Any]:
    uri = f"mongodb://127.0.0.1:{ferret.port}/"
    database = f"overhead_{index}_{mode}"
    home = work / database
    headers: dict[str, str] = {}
    if mode == "secured":
        headers["Authorization"] = f"Bearer {create_token(uri, database, home)}"
    server = serve(home, uri, database, SECURED if mode == "secured" else {})
    pids = [server.pid, ferret.pid]
    auth = [f"{k}: {v}" for k, v in headers.items()]
    try:
        root = f"{server.base}/dicomweb"
        cpu = sum(cpu_seconds(p) for p in pids)
        rate = asyncio.run(stow(f"{root}/studies", files, STOW_CLIENTS, headers))
        stow_cpu = cpu_ms_per(pids, len(files), cpu)
        cpu = sum(cpu_seconds(p) for p in pids)
        qido = run_ab(
            f"{root}/studies?PatientName=*",
            requests,
            READ_CLIENTS,
            work / "ab",
            headers=[f"Accept: {JSON_ACCEPT}", *auth],
        )
        qido_cpu = cpu_ms_per(pids, qido.requests, cpu)
        request = urllib.request.Request(
            f"{root}/instances?limit=1", headers={"Accept": JSON_ACCEPT, **headers}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            instance = json.loads(answer.read())[0]["00081190"]["Value"][0]
        cpu = sum(cpu_seconds(p) for p in pids)
        wado = run_ab(
            instance,
            max(requests // 4, 50),
            READ_CLIENTS,
            work / "ab",
            headers=[f"Accept: {DICOM_ACCEPT}", *auth],
            keepalive=False,
        )
        wado_cpu = cpu_ms_per(pids, wado.requests, cpu)
    finally:
        server.stop()
        with MongoClient(uri) as client:
            client.drop_database(database)  # every round starts from the same FerretDB state
    for result in (qido, wado):
        assert result.failed == 0 and result.non_2xx == 0, result
    return {
        "round": index,
        "mode": mode,
        "stow_instances_per_s": round(rate, 2),
        "stow_cpu_ms_per_instance": stow_cpu,
        "qido_rps": qido.rps,
        "qido_cpu_ms_per_request": qido_cpu,
        "qido_p50_ms": qido.p50_ms,
        "wado_rps": wado.rps,
        "wado_cpu_ms_per_request": wado_cpu,
        "wado_p50_ms": wado.p50_ms,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure: each mode's mean, min and max; secured/open of the means, and of each
    ABBA block (their spread is the noise of the ratio)."""
    summary: dict[str, Any] = {}
    blocks = [rows[i : i + len(ABBA)] for i in range(0, len(rows), len(ABBA))]
    for figure in FIGURES:
        entry: dict[str, Any] = {}
        for mode in MODES:
            values = [r[figure] for r in rows if r["mode"] == mode]
            entry[mode] = {
                "mean": round(statistics.mean(values), 2),
                "min": min(values),
                "max": max(values),
            }
        entry["secured/open"] = _ratio(rows, figure)
        entry["secured/open per ABBA block"] = [_ratio(block, figure) for block in blocks]
        summary[figure] = entry
    return summary


def _ratio(rows: list[dict[str, Any]], figure: str) -> float | None:
    means = {m: statistics.mean(r[figure] for r in rows if r["mode"] == m) for m in MODES}
    return round(means["secured"] / means["open"], 3) if means["open"] else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=120, help="STOW-RS per round")
    parser.add_argument("--requests", type=int, default=600, help="QIDO-RS per round (WADO /4)")
    parser.add_argument("--repeats", type=int, default=2, help="ABBA blocks")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. load)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    corpus = ensure_corpus(CorpusParams(instances=args.instances, patients=10), log=False)
    work = OUT / f"run-auth-overhead-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    ferret = start_ferretdb(work / "ferretdb")
    load_before = os.getloadavg()
    started = time.monotonic()
    rows = []
    try:
        for index, mode in enumerate(ABBA * args.repeats):
            row = one_round(mode, index, ferret, corpus.files, work, args.requests)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        ferret.stop()
    summary = summarise(rows)
    result = {
        "command": " ".join(["perf/bench_auth_overhead.py", *sys.argv[1:]]),
        "machine": machine(),
        "note": args.note,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.monotonic() - started, 1),
        "instances": args.instances,
        "qido_requests": args.requests,
        "wado_requests": max(args.requests // 4, 50),
        "clients": {"stow": STOW_CLIENTS, "qido": READ_CLIENTS, "wado": READ_CLIENTS},
        "order": list(ABBA * args.repeats),
        "rounds": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'figure':26} {'open':>18} {'secured':>18} {'ratio':>6}  per ABBA block")
    for figure, entry in summary.items():
        cells = [
            f"{entry[m]['mean']:>7} [{entry[m]['min']}-{entry[m]['max']}]".rjust(18) for m in MODES
        ]
        blocks = ", ".join(str(x) for x in entry["secured/open per ABBA block"])
        print(f"{figure:26} {cells[0]} {cells[1]} {entry['secured/open']!s:>6}  {blocks}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
