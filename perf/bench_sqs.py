"""S3 -> SQS ingest throughput and event-to-stored latency, with 1 and 3 daemons.

    .venv/bin/python perf/bench_sqs.py [--objects 300] [--daemons 1 3]

A moto server (S3 + SQS) runs in this process on a loopback port; FerretDB and the
`cloudpacs ingest --sqs-queue` daemons are subprocesses. For each daemon count: a fresh
bucket wired to a fresh queue, N synthetic 256x256 CT objects put as fast as possible, and
the time until every instance is stored. Latency is from each object's PUT (the S3 event
time) to its `ingested_at`. Results go to perf/out/results-sqs.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pymongo import MongoClient  # noqa: E402

from cloudpacs.aws.clients import make_clients  # noqa: E402
from cloudpacs.aws.wiring import WiringPlan, wire_bucket  # noqa: E402
from perf.benchlib import FERRETDB, OUT, free_port, wait_port  # noqa: E402
from tests.factory import Spec, make_dataset  # noqa: E402


def corpus(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.glob("*.dcm"))
    if len(paths) >= n:
        return paths[:n]
    studies = [Spec().study_uid for _ in range(max(1, n // 50))]
    for i in range(len(paths), n):
        spec = Spec(study_uid=studies[i % len(studies)], rows=256, columns=256, instance_number=i)
        make_dataset(spec).save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
    return sorted(folder.glob("*.dcm"))[:n]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    daemons: int, files: list[Path], endpoint: str, mongo_uri: str, work: Path
) -> dict[str, Any]:
    clients = make_clients("us-east-1", endpoint, 32)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    clients.s3.create_bucket(Bucket=name)
    plan = wire_bucket(clients.sqs, clients.s3, WiringPlan(bucket=name, queue=name))
    database = f"bench_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "CLOUDPACS_MONGO_URI": mongo_uri,
        "CLOUDPACS_DATABASE": database,
        "CLOUDPACS_AWS_ENDPOINT_URL": endpoint,
        "CLOUDPACS_AWS_REGION": "us-east-1",
        "CLOUDPACS_SQS_WAIT_SECONDS": "1",
        "CLOUDPACS_LOG_LEVEL": "WARNING",
    }
    procs = []
    for i in range(daemons):
        home = work / f"{name}-node{i}"
        home.mkdir(parents=True)
        log = (home / "daemon.log").open("w")
        procs.append(
            subprocess.Popen(
                [
                    str(REPO / ".venv/bin/cloudpacs"),
                    "ingest",
                    "--home",
                    str(home),
                    "--sqs-queue",
                    str(plan.queue_url),
                ],
                env=env,
                stdout=log,
                stderr=log,
            )
        )
        log.close()
    db = MongoClient(mongo_uri)[database]
    time.sleep(3)  # daemons connected and polling
    put_at: dict[str, datetime] = {}
    total_bytes = 0
    started = time.monotonic()
    for i, path in enumerate(files):
        data = path.read_bytes()
        total_bytes += len(data)
        key = f"in/{i:05d}-{path.name}"  # corpus files in different folders share names
        put_at[f"s3://{name}/{key}"] = datetime.now(UTC)
        clients.s3.put_object(Bucket=name, Key=key, Body=data)
    put_seconds = time.monotonic() - started
    while db.instances.count_documents({}) < len(files):
        if time.monotonic() - started > 900:
            raise RuntimeError("timed out waiting for ingest")
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    for proc in procs:
        os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait(60)
    latencies = [
        (doc["ingested_at"].replace(tzinfo=UTC) - put_at[doc["source"]["name"]]).total_seconds()
        for doc in db.instances.find({}, {"ingested_at": 1, "source": 1})
    ]
    db.client.drop_database(database)
    return {
        "daemons": daemons,
        "objects": len(files),
        "megabytes": round(total_bytes / 1e6, 1),
        "put_seconds": round(put_seconds, 1),
        "seconds": round(elapsed, 1),
        "objects_per_s": round(len(files) / elapsed, 1),
        "mb_per_s": round(total_bytes / 1e6 / elapsed, 2),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p99_s": round(percentile(latencies, 0.99), 2),
    }


def sqs_ingest(files: list[Path], daemons: list[int], work: Path) -> list[dict[str, Any]]:
    """One `run` per daemon count, on a moto server (S3 + SQS) in this process and a FerretDB
    of its own; perf/bench_core.py calls it too."""
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(key, value)
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    work.mkdir(parents=True)
    moto_port, db_port = free_port(), free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    (work / "db").mkdir(exist_ok=True)
    ferret = subprocess.Popen(
        [
            str(FERRETDB),
            f"--listen-addr=127.0.0.1:{db_port}",
            f"--sqlite-url=file:{work}/db/",
            "--log-level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(db_port, 20)
        results = [
            run(n, files, f"http://127.0.0.1:{moto_port}", f"mongodb://127.0.0.1:{db_port}/", work)
            for n in daemons
        ]
    finally:
        os.kill(ferret.pid, signal.SIGTERM)
        ferret.wait(20)
        moto.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--daemons", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    files = corpus(OUT / f"corpus-sqs-{args.objects}", args.objects)
    work = OUT / f"sqs-{time.strftime('%Y%m%d-%H%M%S')}"
    results = sqs_ingest(files, args.daemons, work)
    report = {
        "command": " ".join(["perf/bench_sqs.py", *sys.argv[1:]]),
        "nproc": os.cpu_count(),
        "runs": results,
    }
    (OUT / "results-sqs.json").write_text(json.dumps(report, indent=2))
    columns = ("daemons", "objects", "megabytes", "seconds", "objects_per_s", "mb_per_s")
    columns += ("latency_p50_s", "latency_p99_s")
    print(" ".join(f"{c:>14}" for c in columns))
    for r in results:
        print(" ".join(f"{r[c]:>14}" for c in columns))


if __name__ == "__main__":
    main()
