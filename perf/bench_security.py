"""What authentication and the audit trail cost: the same STOW-RS, QIDO-RS and WADO-RS load
against `cloudpacs serve` as it was before them (`--baseline REF`, a git commit, run from a
temporary worktree) and as it is now with an API token required and every request audited,
in ABBA order on one FerretDB, reported as secured/before ratios.

    .venv/bin/python perf/bench_security.py                      # 400 instances, ABBA
    .venv/bin/python perf/bench_security.py --quick              # 120 instances, AB
    .venv/bin/python perf/bench_security.py --baseline fef1599   # the default baseline

Results: perf/out/results-security.json and a table on stdout (perf/RESULTS.md keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
from bench_context import DICOM_ACCEPT, JSON_ACCEPT
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
from phase_ingest import StowStats, multipart_bodies, stow_post

BASELINE = "fef1599"  # main before authentication, projects and audit (issue #5)
MODES = ("before", "secured")
BOOT = "import sys; sys.path.insert(0, {root!r}); from cloudpacs.cli import main; sys.exit(main())"


def start_serve(mode: str, code: Path, home: Path, uri: str, database: str) -> Server:
    """`cloudpacs serve` from the source tree `code` (the baseline worktree, or this repo)."""
    port = free_port()
    argv = [sys.executable, "-c", BOOT.format(root=str(code)), "serve"]
    argv += ["--home", str(home), "--http", f"127.0.0.1:{port}"]
    env = {"CLOUDPACS_MONGO_URI": uri, "CLOUDPACS_DATABASE": database}
    if mode == "secured":
        env["CLOUDPACS_AUTH_REQUIRED"] = "true"
    server = spawn(f"cloudpacs-{mode}", argv, port, home / "serve.log", env)
    return when_ready(server)


async def stow(url: str, files: list[Path], clients: int, headers: dict[str, str]) -> float:
    boundary, bodies = multipart_bodies(files, 1)
    stats, queue = StowStats(), deque(bodies)
    async with aiohttp.ClientSession(headers=headers) as session:

        async def worker() -> None:
            while queue:
                await stow_post(session, url, boundary, queue.popleft(), stats)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    if stats.stored != len(files):
        raise RuntimeError(f"STOW stored {stats.stored} of {len(files)}: {dict(stats.errors)}")
    return len(files) / seconds


def cpu_ms_per(pids: list[int], requests: int, before: float) -> float:
    """CPU milliseconds (cloudpacs + FerretDB) per request since `before`: unlike
    throughput, barely moved by other load on the machine."""
    return round(1000 * (sum(cpu_seconds(p) for p in pids) - before) / max(requests, 1), 2)


def one_round(
    mode: str,
    ferret: Server,
    files: list[Path],
    work: Path,
    args: Any,
    baseline: Path,
) -> dict[str, Any]:
    ferret_uri = f"mongodb://127.0.0.1:{ferret.port}/"
    database = f"bench_sec_{mode}_{uuid.uuid4().hex[:8]}"
    home = work / database
    headers: dict[str, str] = {}
    if mode == "secured":
        headers["Authorization"] = f"Bearer {create_token(ferret_uri, database, home)}"
    server = start_serve(mode, baseline if mode == "before" else REPO, home, ferret_uri, database)
    try:
        root = f"{server.base}/dicomweb"
        pids = [server.pid, ferret.pid]
        cpu = sum(cpu_seconds(p) for p in pids)
        rate = asyncio.run(stow(f"{root}/studies", files, 4, headers))
        stow_cpu = cpu_ms_per(pids, len(files), cpu)
        auth = [f"{k}: {v}" for k, v in headers.items()]
        cpu = sum(cpu_seconds(p) for p in pids)
        qido = run_ab(
            f"{root}/studies?PatientName=*",
            args.requests,
            16,
            work / "ab",
            headers=[f"Accept: {JSON_ACCEPT}", *auth],
        )
        qido_cpu = cpu_ms_per(pids, qido.requests, cpu)
        request = urllib.request.Request(
            f"{root}/instances?limit=1", headers={"Accept": JSON_ACCEPT, **headers}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            sample = json.loads(answer.read())[0]
        instance = sample["00081190"]["Value"][0]
        cpu = sum(cpu_seconds(p) for p in pids)
        wado = run_ab(
            instance,
            args.requests,
            16,
            work / "ab",
            headers=[f"Accept: {DICOM_ACCEPT}", *auth],
            keepalive=False,
        )
        wado_cpu = cpu_ms_per(pids, wado.requests, cpu)
    finally:
        server.stop()
    return {
        "mode": mode,
        "stow_instances_per_s_c4": round(rate, 2),
        "stow_cpu_ms_per_instance": stow_cpu,
        "qido_cpu_ms_per_request": qido_cpu,
        "wado_cpu_ms_per_request": wado_cpu,
        "qido_rps_c16": qido.rps,
        "qido_p50_ms": qido.p50_ms,
        "qido_p99_ms": qido.p99_ms,
        "qido_failed": qido.failed + qido.non_2xx,
        "wado_rps_c16": wado.rps,
        "wado_p99_ms": wado.p99_ms,
        "wado_failed": wado.failed + wado.non_2xx,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline", default=BASELINE, help="git ref of the 'before' code")
    parser.add_argument("--out", type=Path, default=OUT / "results-security.json")
    args = parser.parse_args()
    instances = 120 if args.quick else 400
    args.requests = 300 if args.quick else 1500
    corpus = ensure_corpus(CorpusParams(instances=instances, patients=10))
    work = OUT / f"run-security-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    baseline = work / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline],
        check=True,
        capture_output=True,
    )
    ferret = start_ferretdb(work / "ferretdb")
    rows = []
    try:
        # ABBA: drift over the run (FerretDB's file growing, other load) cancels out
        order = ["before", "secured"] if args.quick else ["before", "secured", "secured", "before"]
        for mode in order:
            row = one_round(mode, ferret, corpus.files, work, args, baseline)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        ferret.stop()
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False
        )
    summary = {}
    for key in rows[0]:
        if key == "mode":
            continue
        means = {m: statistics.mean(r[key] for r in rows if r["mode"] == m) for m in MODES}
        summary[key] = {
            **{m: round(v, 2) for m, v in means.items()},
            "secured/before": (
                round(means["secured"] / means["before"], 3) if means["before"] else None
            ),
        }
    result = {
        "machine": machine(),
        "instances": instances,
        "requests": args.requests,
        "rounds": rows,
        "summary": summary,
        "baseline": args.baseline,
        "command": "perf/bench_security.py" + (" --quick" if args.quick else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'figure':28} {'before':>10} {'secured':>10} {'secured/before':>15}")
    for key, row in summary.items():
        print(f"{key:28} {row['before']:>10} {row['secured']:>10} {row['secured/before']!s:>15}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
