"""Retrieving a 2 GB study over WADO-RS: does the API process stay under 300 MB RSS?

    .venv/bin/python perf/bench_large_study.py                  # 4 series x 1,000 CT (2.1 GB)
    .venv/bin/python perf/bench_large_study.py --per-series 50  # quick check

One CT study (512x512 16-bit, 513 KB per instance) is generated under perf/out/, stored in
`cloudpacs run` on its embedded FerretDB over STOW-RS, then fetched whole with
`GET /studies/{uid}` (multipart, transfer-syntax=*) by a client that reads the answer as it
streams and checks every part's bytes (sha256) against the files. The server's RSS is sampled
every 50 ms and its peak (VmHWM, reset before the GET) recorded.
Result: perf/out/results-large-study.json (and a line on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_context import DICOM_ACCEPT
from benchlib import OUT, machine, reset_peak_rss, rss_kb, start_archive, status_kb
from corpus import Patient, SeriesPlan, StudyPlan, uid, write_one
from phase_ingest import StowStats, multipart_bodies, stow_post

SEED = 11
TARGET_RSS_MB = 300


@dataclass(frozen=True)
class LargeStudy:
    folder: Path
    study_uid: str
    files: list[Path]
    sha256: dict[str, str]  # SOP Instance UID -> sha256 of its file

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def generate(series_count: int, per_series: int) -> LargeStudy:
    folder = OUT / f"large-study-{series_count}x{per_series}"
    patient = Patient("LARGE0001", "LARGE^STUDY", "19600101", "F")
    plan = StudyPlan(
        patient, uid(SEED, "study"), "CT", "20240101", "120000", "LRG0001", "CT LARGE", "CHEST"
    )
    plan.series = [
        SeriesPlan(uid(SEED, "series", n), n + 1, f"AXIAL {n + 1}", per_series)
        for n in range(series_count)
    ]
    manifest = folder / "manifest.json"
    if not manifest.exists():
        shutil.rmtree(folder, ignore_errors=True)
        items = [
            write_one(folder, plan, series, i, SEED)
            for series in plan.series
            for i in range(series.count)
        ]
        for item in items:
            item["sha256"] = hashlib.sha256((folder / item["path"]).read_bytes()).hexdigest()
        manifest.write_text(json.dumps(items))
    items = json.loads(manifest.read_text())
    return LargeStudy(
        folder,
        plan.uid,
        [folder / item["path"] for item in items],
        {item["sop"]: item["sha256"] for item in items},
    )


async def store(url: str, files: list[Path], clients: int = 4, batch: int = 4) -> StowStats:
    """STOW-RS the files, `batch` per request, each body built only when it is sent."""
    stats = StowStats()
    batches = [files[i : i + batch] for i in range(0, len(files), batch)]
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while batches:
                boundary, (body,) = multipart_bodies(batches.pop(0), batch)
                await stow_post(session, url, boundary, body, stats)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return stats


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread, keeping the maximum."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.max_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_kb = max(self.max_kb, rss_kb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def fetch_study(url: str, expected: dict[str, str]) -> dict[str, Any]:
    """GET the study, hashing each part as it streams; never holds more than a chunk."""
    started = time.perf_counter()
    parts = matched = 0
    total = 0
    timeout = aiohttp.ClientTimeout(total=3600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers={"Accept": DICOM_ACCEPT}) as answer,
    ):
        answer.raise_for_status()
        reader = aiohttp.MultipartReader.from_response(answer)
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            digest = hashlib.sha256()
            while chunk := await part.read_chunk(1 << 20):
                digest.update(chunk)
                total += len(chunk)
            parts += 1
            sop = (part.headers.get("Content-Location") or "").rsplit("/", 1)[-1]
            matched += expected.get(sop) == digest.hexdigest()
    seconds = time.perf_counter() - started
    return {
        "parts": parts,
        "byte_exact_parts": matched,
        "bytes": total,
        "seconds": round(seconds, 1),
        "mb_per_s": round(total / 1e6 / seconds, 1),
    }


def run(series_count: int, per_series: int, keep: bool) -> dict[str, Any]:
    study = generate(series_count, per_series)
    total = study.total_bytes
    print(f"study: {len(study.files)} instances, {total / 1e9:.2f} GB", flush=True)
    home = OUT / f"run-large-{time.strftime('%Y%m%d-%H%M%S')}"
    archive = start_archive("run", home, "large")
    try:
        base = f"{archive.server.base}/dicomweb"
        started = time.perf_counter()
        stats = asyncio.run(store(f"{base}/studies", study.files))
        stored_s = time.perf_counter() - started
        print(f"stored {stats.stored} in {stored_s:.0f} s; errors {dict(stats.errors)}", flush=True)
        pid = archive.server.pid
        rss_before = rss_kb(pid)
        peak_reset = reset_peak_rss(pid)
        with RssSampler(pid) as sampler:
            fetched = asyncio.run(fetch_study(f"{base}/studies/{study.study_uid}", study.sha256))
        peak_kb = status_kb(pid, "VmHWM") if peak_reset else sampler.max_kb
    finally:
        archive.stop()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    return {
        "machine": machine(),
        "instances": len(study.files),
        "study_bytes": total,
        "stow": {"stored": stats.stored, "seconds": round(stored_s, 1)},
        "retrieval": fetched,
        "api_rss_mb": {
            "before": round(rss_before / 1024, 1),
            "sampled_max": round(sampler.max_kb / 1024, 1),
            "peak_vmhwm": round(peak_kb / 1024, 1) if peak_reset else None,
        },
        "target_rss_mb": TARGET_RSS_MB,
        "command": " ".join(["perf/bench_large_study.py", *sys.argv[1:]]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--per-series", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the run's database")
    parser.add_argument("--out", type=Path, default=OUT / "results-large-study.json")
    args = parser.parse_args()
    results = run(args.series, args.per_series, args.keep)
    args.out.write_text(json.dumps(results, indent=2))
    rss = results["api_rss_mb"]
    peak = rss["peak_vmhwm"] or rss["sampled_max"]
    got = results["retrieval"]
    print(
        f"retrieved {got['parts']} parts ({got['byte_exact_parts']} byte-exact), "
        f"{got['bytes'] / 1e9:.2f} GB at {got['mb_per_s']} MB/s; API peak RSS {peak} MB "
        f"(target < {TARGET_RSS_MB} MB) -> {args.out}"
    )
    ok = got["byte_exact_parts"] == results["instances"] and peak < TARGET_RSS_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
