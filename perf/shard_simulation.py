"""Simulate how cloudpacs' shard keys spread a synthetic 10-million-instance archive.

    .venv/bin/python perf/shard_simulation.py                           # tables on stdout
    .venv/bin/python perf/shard_simulation.py --write perf/SHARDING.md  # also into the doc

Archive: 100,000 studies, instances per study lognormal (mean 100: radiographs with a few
images to CT/MR with thousands), files lognormal around 512 KiB stored as 255 KiB GridFS
chunks, ingested study after study in random study order (study UIDs are random; GridFS file
ids are ObjectIds, so they grow with time).

MongoDB model (7.0, what deploy/ installs):
- hashed keys: MongoDB's own hash (md5 of seed, canonical BSON type and value, first 8 bytes
  little-endian; checked against the server's self-test value below); an empty collection is
  pre-split into equal hash ranges, INITIAL_CHUNKS_PER_SHARD per shard, dealt round-robin;
- balancer (6.0+): balances data size, not chunk counts; acts while the most and least loaded
  shards differ by more than 3 ranges (3 x 128 MiB); moves the donor's lowest range, at most
  128 MiB (splitting it), with each shard in one migration at a time; no auto-split on insert;
- range key fs.chunks {files_id: 1, n: 1}: the collection starts as one range on the primary
  shard; every new ObjectId is above every existing key, so all inserts land in the top range
  (x, MaxKey) wherever it lives. Time advances in balancer rounds (one 128 MiB migration each)
  while the archive is ingested at INGEST_BYTES_PER_S.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1000 * 1000

SEED = 20_261_125
STUDIES = 100_000
MEAN_INSTANCES_PER_STUDY = 100  # 10 million instances
STUDY_SIZE_SIGMA = 1.3  # lognormal spread: a few images (CR/DX) .. thousands (CT, MR)
MEAN_FILE_BYTES = 512 * KiB
FILE_SIZE_SIGMA = 0.5
GRIDFS_CHUNK_BYTES = 255 * KiB  # GridFS default chunk size
CHUNK_DOC_OVERHEAD = 62  # BSON around a chunk's data: _id, files_id, n, field names
FILES_DOC_BYTES = 250  # fs.files: _id, length, chunkSize, uploadDate, metadata
MEAN_INSTANCE_DOC_BYTES = 8 * KiB  # `instances`: DICOM JSON without bulk data, keys, ranges
INSTANCE_DOC_SIGMA = 0.5
STUDY_DOC_BYTES = 2 * KiB
APP_PROCESSES = 32  # 4 app nodes x 8 ingest workers: ObjectIds' 5-byte per-process value
INGEST_START = 1_767_225_600  # 2026-01-01T00:00:00Z, ObjectIds' 4-byte seconds

RANGE_BYTES = 128 * MiB  # MongoDB 6.0+ default chunk (range) size
BALANCE_THRESHOLD = 3 * RANGE_BYTES  # 6.0+: balanced below 3 ranges of data difference
INITIAL_CHUNKS_PER_SHARD = 2  # hashed pre-split of an empty collection (numInitialChunks)
INGEST_BYTES_PER_S = 100 * MB  # ~190 files/s of 512 KiB: a busy bulk import (assumption)
STEADY_INGEST_BYTES_PER_S = 10 * MB  # ~19 files/s: a steady clinical feed (assumption)
MIGRATION_BYTES_PER_S = 40 * MB  # copy rate of one range migration (assumption)
MIGRATION_OVERHEAD_S = 2.0  # per migration: set-up, catch-up, critical section, commit
SHARD_COUNTS = (2, 4, 8)
BALANCER_MAX_MOVES = 100_000  # guard against a non-converging balancer model

HASH_SEED = 0  # MongoDB hashes shard keys with seed 0
BSON_CANONICAL_NUMBER = 10
BSON_CANONICAL_STRING = 15
BSON_CANONICAL_OBJECTID = 35
# MongoDB's own hasher self-test (src/mongo/db/hasher.cpp): hash64({check: 42}, seed 0).
MONGO_HASH_CHECK = -944_302_157_085_130_861
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"


# ------------------------------------------------------------------------ hashing ---


def _digest64(payloads: Iterable[bytes]) -> np.ndarray:
    """First 8 bytes of md5(seed + payload), little-endian signed: MongoDB's hash64."""
    seed = struct.pack("<i", HASH_SEED)
    md5 = hashlib.md5
    out = bytearray()
    for payload in payloads:
        out += md5(seed + payload).digest()[:8]
    return np.frombuffer(bytes(out), dtype="<i8").copy()


def hash_int(value: int) -> int:
    payload = struct.pack("<iq", BSON_CANONICAL_NUMBER, value)
    return int(_digest64([payload])[0])


def hash_strings(values: Sequence[str]) -> np.ndarray:
    """hash64 of BSON strings: canonical type, then the value as BSON stores it (int32
    length including the NUL, the UTF-8 bytes, the NUL)."""
    prefix = struct.pack("<i", BSON_CANONICAL_STRING)
    return _digest64(
        prefix + struct.pack("<i", len(raw) + 1) + raw + b"\0"
        for raw in (v.encode() for v in values)
    )


def hash_objectids(oids: np.ndarray) -> np.ndarray:
    """hash64 of ObjectIds given as an (n, 12) uint8 array."""
    prefix = struct.pack("<i", BSON_CANONICAL_OBJECTID)
    buf = oids.tobytes()
    return _digest64(prefix + buf[i : i + 12] for i in range(0, len(buf), 12))


def check_hash() -> None:
    if hash_int(42) != MONGO_HASH_CHECK:
        raise AssertionError("the hash model does not reproduce MongoDB's hasher self-test")


# ------------------------------------------------------------------------ archive ---


@dataclass(frozen=True)
class Archive:
    """One row per instance, in ingest order (a study's instances are contiguous)."""

    study_instances: np.ndarray  # per study
    study_hash: np.ndarray  # per study: hash of its UID
    study_of: np.ndarray  # per instance: its study
    file_bytes: np.ndarray  # per instance: the DICOM file
    chunk_bytes: np.ndarray  # per instance: its fs.chunks documents, in total
    doc_bytes: np.ndarray  # per instance: its `instances` document
    file_hash: np.ndarray  # per instance: hash of its GridFS files_id (an ObjectId)

    @property
    def instances(self) -> int:
        return len(self.study_of)


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, size: int) -> np.ndarray:
    return rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size)


def _study_uids(rng: np.random.Generator, count: int) -> list[str]:
    """UIDs under one root, like a site's: a long shared prefix, random digits after it."""
    tails = rng.integers(10**17, 10**18, size=(count, 2))
    return [f"1.2.826.0.1.3680043.10.1234.{a}.{b}" for a, b in tails]


def _object_ids(rng: np.random.Generator, file_bytes: np.ndarray) -> np.ndarray:
    """ObjectIds as the app nodes make them: seconds since the ingest began (at
    INGEST_BYTES_PER_S), a random 5-byte value per process, a per-process counter."""
    n = len(file_bytes)
    seconds = INGEST_START + (np.cumsum(file_bytes) // INGEST_BYTES_PER_S).astype(np.uint32)
    process = rng.integers(0, APP_PROCESSES, size=n)
    process_value = rng.integers(0, 2**40, size=APP_PROCESSES, dtype=np.uint64)[process]
    counter = np.arange(n, dtype=np.uint32) & 0xFFFFFF
    oid = np.empty((n, 12), dtype=np.uint8)
    oid[:, 0:4] = seconds.astype(">u4").view(np.uint8).reshape(n, 4)
    oid[:, 4:9] = process_value.astype(">u8").view(np.uint8).reshape(n, 8)[:, 3:]
    oid[:, 9:12] = counter.astype(">u4").view(np.uint8).reshape(n, 4)[:, 1:]
    return oid


def make_archive(seed: int = SEED, studies: int = STUDIES) -> Archive:
    rng = np.random.default_rng(seed)
    sizes = np.maximum(
        1, np.rint(_lognormal(rng, MEAN_INSTANCES_PER_STUDY, STUDY_SIZE_SIGMA, studies))
    ).astype(np.int64)
    order = rng.permutation(studies)  # arrival order of the studies
    study_of = np.repeat(order, sizes[order])
    n = len(study_of)
    file_bytes = np.maximum(1024, _lognormal(rng, MEAN_FILE_BYTES, FILE_SIZE_SIGMA, n)).astype(
        np.int64
    )
    chunks = -(-file_bytes // GRIDFS_CHUNK_BYTES)
    doc_bytes = _lognormal(rng, MEAN_INSTANCE_DOC_BYTES, INSTANCE_DOC_SIGMA, n).astype(np.int64)
    return Archive(
        study_instances=sizes,
        study_hash=hash_strings(_study_uids(rng, studies)),
        study_of=study_of,
        file_bytes=file_bytes,
        chunk_bytes=file_bytes + chunks * CHUNK_DOC_OVERHEAD,
        doc_bytes=doc_bytes,
        file_hash=hash_objectids(_object_ids(rng, file_bytes)),
    )


# ---------------------------------------------------------------- hashed sharding ---


def presplit_owner(hashes: np.ndarray, shards: int) -> np.ndarray:
    """Shard of each hash after the pre-split: equal hash ranges, dealt round-robin."""
    ranges = shards * INITIAL_CHUNKS_PER_SHARD
    unsigned = hashes.view(np.uint64) ^ np.uint64(1 << 63)  # order-preserving int64->uint64
    index = ((unsigned >> np.uint64(32)) * np.uint64(ranges)) >> np.uint64(32)
    return (index % np.uint64(shards)).astype(np.int64)


@dataclass(frozen=True)
class Balanced:
    owner: np.ndarray  # per item (in the caller's order)
    moves: int
    moved_bytes: int
    jumbo: int  # moves refused: a single key value over the range size


def balance_hashed(hashes: np.ndarray, sizes: np.ndarray, shards: int) -> Balanced:
    """Pre-split placement, then the balancer: while max-min data > 3 ranges, move the
    donor's lowest contiguous hash range (<= 128 MiB, whole key values) to the least loaded."""
    order = np.argsort(hashes, kind="stable")
    owner = presplit_owner(hashes[order], shards)
    size = sizes[order]
    data = np.bincount(owner, weights=size, minlength=shards)
    moves = moved = jumbo = 0
    while data.max() - data.min() > BALANCE_THRESHOLD and moves < BALANCER_MAX_MOVES:
        donor, recipient = int(data.argmax()), int(data.argmin())
        items = np.flatnonzero(owner == donor)
        run = items[: np.searchsorted(items - items[0] - np.arange(len(items)), 1)]
        take = max(1, int(np.searchsorted(np.cumsum(size[run]), RANGE_BYTES, side="right")))
        if size[run[0]] > RANGE_BYTES:
            jumbo += 1
        chosen = run[:take]
        owner[chosen] = recipient
        amount = size[chosen].sum()
        data[donor] -= amount
        data[recipient] += amount
        moves += 1
        moved += int(amount)
    result = np.empty_like(owner)
    result[order] = owner
    return Balanced(result, moves, moved, jumbo)


# ----------------------------------------------------------------- range sharding ---


@dataclass(frozen=True)
class RangeRun:
    hottest_insert_share: float  # of all inserted bytes, the share the busiest shard took
    end_of_ingest_imbalance: float  # max/mean data when the last file is written
    migrated_share: float  # bytes migrated by the balancer / bytes stored
    ingest_hours: float
    catch_up_hours: float  # after the ingest, until the balancer is done
    final_imbalance: float
    owner: np.ndarray  # per instance: shard of its chunks at the end (first chunk's)


class RangeCluster:
    """fs.chunks with a monotonic key: key order == ingest order, so a position in the byte
    stream of all chunks is a key. Each shard holds finite ranges [a, b) in a heap; the top
    range [top_start, MaxKey) takes every insert."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.heaps: list[list[tuple[int, int]]] = [[] for _ in range(shards)]
        self.top_owner = 0  # the primary shard of the database
        self.top_start = 0
        self.written = 0
        self.data = np.zeros(shards)
        self.inserted = np.zeros(shards)
        self.migrated = 0

    def insert(self, amount: int) -> None:
        self.written += amount
        self.data[self.top_owner] += amount
        self.inserted[self.top_owner] += amount

    def move_lowest(self, donor: int, recipient: int) -> None:
        """Move the donor's lowest range (split at RANGE_BYTES) to the recipient."""
        heap = self.heaps[donor]
        if heap:
            start, end = heapq.heappop(heap)
            if end - start > RANGE_BYTES:
                heapq.heappush(heap, (start + RANGE_BYTES, end))
                end = start + RANGE_BYTES
            heapq.heappush(self.heaps[recipient], (start, end))
        elif donor == self.top_owner:
            start = self.top_start
            end = min(self.written, start + RANGE_BYTES)
            if end < self.written:
                heapq.heappush(self.heaps[recipient], (start, end))
                self.top_start = end
            else:  # the whole top range moves, and the hot spot with it
                self.top_owner = recipient
        else:
            return
        self.data[donor] -= end - start
        self.data[recipient] += end - start
        self.migrated += end - start

    def balancer_round(self) -> None:
        """Disjoint donor/recipient pairs, most loaded with least loaded, one move each."""
        by_load = list(np.argsort(self.data))
        while len(by_load) >= 2:
            low, high = by_load.pop(0), by_load.pop()
            if self.data[high] - self.data[low] <= BALANCE_THRESHOLD:
                break
            self.move_lowest(int(high), int(low))

    def imbalance(self) -> float:
        return float(self.data.max() / self.data.mean())

    def owners_at(self, positions: np.ndarray) -> np.ndarray:
        ranges = sorted(
            [(start, shard) for shard, heap in enumerate(self.heaps) for start, _ in heap]
            + [(self.top_start, self.top_owner)]
        )
        starts = np.array([r[0] for r in ranges])
        owners = np.array([r[1] for r in ranges])
        return owners[np.searchsorted(starts, positions, side="right") - 1]


def simulate_range(
    chunk_bytes: np.ndarray, shards: int, ingest_rate: float = INGEST_BYTES_PER_S
) -> RangeRun:
    cluster = RangeCluster(shards)
    round_seconds = RANGE_BYTES / MIGRATION_BYTES_PER_S + MIGRATION_OVERHEAD_S
    per_round = int(ingest_rate * round_seconds)
    total = int(chunk_bytes.sum())
    rounds = 0
    while cluster.written < total:
        cluster.insert(min(per_round, total - cluster.written))
        cluster.balancer_round()
        rounds += 1
    end_imbalance = cluster.imbalance()
    catch_up = 0
    while cluster.data.max() - cluster.data.min() > BALANCE_THRESHOLD:
        cluster.balancer_round()
        catch_up += 1
    starts = np.cumsum(chunk_bytes) - chunk_bytes
    return RangeRun(
        hottest_insert_share=float(cluster.inserted.max() / total),
        end_of_ingest_imbalance=end_imbalance,
        migrated_share=cluster.migrated / total,
        ingest_hours=rounds * round_seconds / 3600,
        catch_up_hours=catch_up * round_seconds / 3600,
        final_imbalance=cluster.imbalance(),
        owner=cluster.owners_at(starts),
    )


# ------------------------------------------------------------------------ metrics ---


def max_over_mean(owner: np.ndarray, shards: int, weights: np.ndarray | None = None) -> float:
    per_shard = np.bincount(owner, weights=weights, minlength=shards)
    return float(per_shard.max() / per_shard.mean())


def shards_per_study(
    study_of: np.ndarray, owner: np.ndarray, shards: int, studies: int
) -> np.ndarray:
    """How many shards hold a piece of each study."""
    pairs = np.unique(study_of.astype(np.int64) * shards + owner)
    return np.bincount(pairs // shards, minlength=studies)


@dataclass(frozen=True)
class Row:
    shards: int
    values: dict[str, str]


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def ratio(x: float) -> str:
    return f"{x:.4f}"


def study_rows(archive: Archive, shards: int) -> dict[str, str]:
    """instances/series {study: hashed} and studies {_id: hashed}."""
    study_docs = np.full(len(archive.study_hash), STUDY_DOC_BYTES)
    studies = balance_hashed(archive.study_hash, study_docs, shards)
    study_bytes = np.bincount(
        archive.study_of, weights=archive.doc_bytes, minlength=len(archive.study_hash)
    )
    by_study = balance_hashed(archive.study_hash, study_bytes, shards)
    owner = by_study.owner[archive.study_of]  # every instance lives with its study
    spans = shards_per_study(archive.study_of, owner, shards, len(archive.study_hash))
    counts = np.bincount(owner, minlength=shards)
    return {
        "instances per shard (min .. max)": f"{counts.min():,} .. {counts.max():,}",
        "instances max/mean": ratio(max_over_mean(owner, shards)),
        "instance bytes max/mean": ratio(max_over_mean(owner, shards, archive.doc_bytes)),
        "studies max/mean": ratio(max_over_mean(studies.owner, shards)),
        "balancer moves (bytes)": f"{by_study.moves} ({by_study.moved_bytes / GiB:.1f} GiB)",
        "study queries on one shard": pct(float((spans == 1).mean())),
    }


def gridfs_rows(archive: Archive, shards: int) -> tuple[dict[str, str], dict[str, str]]:
    """fs.chunks with the range key (and fs.files hashed), then the hashed alternative."""
    n_studies = len(archive.study_hash)
    files = balance_hashed(archive.file_hash, np.full(archive.instances, FILES_DOC_BYTES), shards)
    ranged = simulate_range(archive.chunk_bytes, shards)
    steady = simulate_range(archive.chunk_bytes, shards, STEADY_INGEST_BYTES_PER_S)
    range_spans = shards_per_study(archive.study_of, ranged.owner, shards, n_studies)
    hashed = balance_hashed(archive.file_hash, archive.chunk_bytes, shards)
    hashed_spans = shards_per_study(archive.study_of, hashed.owner, shards, n_studies)
    inserted = np.bincount(hashed.owner, weights=archive.chunk_bytes, minlength=shards)
    range_row = {
        "fs.files {_id: hashed} max/mean": ratio(max_over_mean(files.owner, shards)),
        "inserts on the busiest shard": pct(ranged.hottest_insert_share),
        "bytes max/mean, end of ingest": ratio(ranged.end_of_ingest_imbalance),
        "ingest hours": f"{ranged.ingest_hours:.1f}",
        "balancer catch-up hours": f"{ranged.catch_up_hours:.1f}",
        "bytes max/mean, balanced": ratio(ranged.final_imbalance),
        "migrated / stored": pct(ranged.migrated_share),
        "study retrievals on one shard": pct(float((range_spans == 1).mean())),
        "shards per study retrieval (mean)": f"{range_spans.mean():.2f}",
        "steady feed: inserts on the busiest shard": pct(steady.hottest_insert_share),
        "steady feed: bytes max/mean, end of ingest": ratio(steady.end_of_ingest_imbalance),
        "steady feed: migrated / stored": pct(steady.migrated_share),
    }
    hashed_row = {
        "inserts on the busiest shard": pct(float(inserted.max() / inserted.sum())),
        "bytes max/mean": ratio(max_over_mean(hashed.owner, shards, archive.chunk_bytes)),
        "migrated / stored": pct(hashed.moved_bytes / float(archive.chunk_bytes.sum())),
        "jumbo (unsplittable) moves": str(hashed.jumbo),
        "study retrievals on one shard": pct(float((hashed_spans == 1).mean())),
        "shards per study retrieval (mean)": f"{hashed_spans.mean():.2f}",
    }
    return range_row, hashed_row


def table(title: str, rows: list[Row]) -> str:
    keys = list(rows[0].values)
    lines = [
        f"**{title}**",
        "",
        "| | " + " | ".join(f"{r.shards} shards" for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    lines += [f"| {k} | " + " | ".join(r.values[k] for r in rows) + " |" for k in keys]
    return "\n".join(lines) + "\n"


def archive_summary(archive: Archive) -> str:
    sizes = archive.study_instances
    total = archive.chunk_bytes.sum()
    biggest = int(np.argmax(sizes))
    study_doc_bytes = archive.doc_bytes[archive.study_of == biggest].sum()
    return "\n".join(
        [
            "**Synthetic archive**",
            "",
            f"- {len(sizes):,} studies, {archive.instances:,} instances; instances per study: "
            f"median {int(np.median(sizes))}, p99 {int(np.percentile(sizes, 99)):,}, "
            f"max {sizes.max():,}",
            f"- files: mean {archive.file_bytes.mean() / KiB:.0f} KiB, "
            f"{(-(-archive.file_bytes // GRIDFS_CHUNK_BYTES)).mean():.2f} GridFS chunks of 255 KiB "
            f"on average; fs.chunks {total / 2**40:.2f} TiB; `instances` "
            f"{archive.doc_bytes.sum() / GiB:.0f} GiB",
            f"- largest study: {sizes.max():,} instances, {study_doc_bytes / MiB:.0f} MiB of "
            f"`instances` documents (a hashed study key cannot split one study: over "
            f"{RANGE_BYTES // MiB} MiB it would be a jumbo range)",
            "",
        ]
    )


def run(shard_counts: Sequence[int]) -> str:
    check_hash()
    started = time.perf_counter()
    archive = make_archive()
    study = [Row(s, study_rows(archive, s)) for s in shard_counts]
    gridfs = [(s, *gridfs_rows(archive, s)) for s in shard_counts]
    elapsed = time.perf_counter() - started
    return "\n".join(
        [
            archive_summary(archive),
            table("instances and series {study: hashed}; studies {_id: hashed}", study),
            table(
                "GridFS today: fs.chunks {files_id: 1, n: 1} (range), fs.files {_id: hashed}",
                [Row(s, r) for s, r, _ in gridfs],
            ),
            table(
                'Alternative: fs.chunks {files_id: "hashed", n: 1}',
                [Row(s, h) for s, _, h in gridfs],
            ),
            f"_Bulk ingest modelled at {INGEST_BYTES_PER_S / MB:.0f} MB/s, steady feed at "
            f"{STEADY_INGEST_BYTES_PER_S / MB:.0f} MB/s; one migration copies "
            f"{MIGRATION_BYTES_PER_S / MB:.0f} MB/s plus {MIGRATION_OVERHEAD_S:.0f} s; "
            f"seed {SEED}; {elapsed:.0f} s on this machine._",
            "",
        ]
    )


def write_results(doc: Path, results: str) -> None:
    text = doc.read_text()
    head, sep, rest = text.partition(RESULTS_START)
    _, sep2, tail = rest.partition(RESULTS_END)
    if not sep or not sep2:
        raise SystemExit(f"{doc}: no {RESULTS_START} ... {RESULTS_END} section")
    doc.write_text(f"{head}{RESULTS_START}\n{results}{RESULTS_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=list(SHARD_COUNTS))
    parser.add_argument("--write", type=Path, help="replace the results section of this file")
    args = parser.parse_args(argv)
    results = run(args.shards)
    print(results)
    if args.write:
        write_results(args.write, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
