"""The cost of authentication and the audit trail alone, on today's code: QIDO-RS study
searches (ab, 16 clients) against one archive served open, secured (API token required,
every request audited) and secured with the audit writes held back, then open again;
CPU milliseconds per request of cloudpacs and of FerretDB beside the throughput.

    .venv/bin/python perf/bench_auth_overhead.py [--requests 800]

(perf/bench_security.py compares with the code from before issue #5 instead.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from bench_context import JSON_ACCEPT
from bench_security import create_token, stow
from benchlib import OUT, Server, cpu_seconds, free_port, run_ab, spawn, start_ferretdb, when_ready
from corpus import CorpusParams, ensure_corpus

SECURED = {"CLOUDPACS_AUTH_REQUIRED": "true"}
MODES = [
    ("open", {}),
    ("secured", SECURED),
    ("secured, audit writes held back", {**SECURED, "CLOUDPACS_AUDIT_FLUSH_SECONDS": "1e6"}),
    ("open again", {}),
]


def serve(work: Path, uri: str, env: dict[str, str]) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "cloudpacs", "serve", "--home", str(work / "home")]
    argv += ["--http", f"127.0.0.1:{port}"]
    env = {"CLOUDPACS_MONGO_URI": uri, "CLOUDPACS_DATABASE": "overhead", **env}
    return when_ready(spawn("cloudpacs", argv, port, work / "serve.log", env))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=800)
    args = parser.parse_args()
    corpus = ensure_corpus(CorpusParams(instances=120, patients=10), log=False)
    work = OUT / f"run-auth-overhead-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    ferret = start_ferretdb(work / "ferretdb")
    uri = f"mongodb://127.0.0.1:{ferret.port}/"
    try:
        server = serve(work, uri, {})
        asyncio.run(stow(f"{server.base}/dicomweb/studies", corpus.files, 4, {}))
        server.stop()
        token = create_token(uri, "overhead", work / "home")
        print(f"{'mode':34} {'req/s':>7} {'CPU ms/req':>10} {'of which app':>12}")
        for name, env in MODES:
            server = serve(work, uri, env)
            auth = [f"Authorization: Bearer {token}"] if env else []
            pids = [server.pid, ferret.pid]
            total, app = sum(cpu_seconds(p) for p in pids), cpu_seconds(server.pid)
            result = run_ab(
                f"{server.base}/dicomweb/studies?PatientName=*",
                args.requests,
                16,
                work / "ab",
                headers=[f"Accept: {JSON_ACCEPT}", *auth],
            )
            total = 1000 * (sum(cpu_seconds(p) for p in pids) - total) / args.requests
            app = 1000 * (cpu_seconds(server.pid) - app) / args.requests
            server.stop()
            assert result.non_2xx == 0 and result.failed == 0, result
            print(f"{name:34} {result.rps:>7.1f} {total:>10.2f} {app:>12.2f}", flush=True)
    finally:
        ferret.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
