"""What every phase of perf/bench_core.py shares: the plan (how much work), the run context
(corpus, run folder, results so far) and the DICOMweb target under test.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import Server
from corpus import Corpus, CorpusParams

DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"


@dataclass(frozen=True)
class Plan:
    """How much work each phase does (all bounded in count and in time)."""

    instances: int = 1000
    patients: int = 20
    seed: int = 7
    stow_instances: int = 300
    stow_batch: int = 10
    stow_clients: tuple[int, ...] = (1, 4, 16)
    # the whole corpus is loaded over STOW-RS with this many clients (cluster, Orthanc)
    load_clients: int = 4
    qido_clients: tuple[int, ...] = (1, 16, 64)
    qido_requests: tuple[int, ...] = (100, 300, 600)
    wado_clients: tuple[int, ...] = (1, 16)
    # enough requests for seconds of load at 16 clients (200 took 0.3 s: noise)
    wado_instance_requests: tuple[int, ...] = (500, 3000)
    metadata_requests: tuple[int, ...] = (100, 400)
    series_clients: tuple[int, ...] = (1,)
    series_max: int = 200
    sqs_instances: int = 300
    # seconds one ab run aims at; slow URLs get fewer requests (never fewer than clients)
    ab_time_limit: int = 10
    ab_max_seconds: int = 240
    phase_time_limit: float = 900.0
    ceiling_docs: int = 1000
    ceiling_files: int = 200
    ceiling_threads: int = 8

    @property
    def corpus_params(self) -> CorpusParams:
        return CorpusParams(self.instances, self.patients, self.seed)


QUICK = Plan(
    instances=200,
    stow_instances=100,
    qido_requests=(30, 100, 200),
    wado_instance_requests=(20, 60),
    metadata_requests=(30, 100),
    series_max=12,
    sqs_instances=60,
    ab_time_limit=10,
    phase_time_limit=300.0,
    ceiling_docs=200,
    ceiling_files=40,
)


@dataclass
class Context:
    plan: Plan
    corpus: Corpus
    run_dir: Path
    ferretdb: Server | None  # None: every cloudpacs runs its embedded FerretDB
    results: dict[str, Any] = field(default_factory=dict)
    sample_doc: dict[str, Any] | None = None


@dataclass(frozen=True)
class Target:
    """A DICOMweb server under test: its service root URL and the processes behind it."""

    name: str
    root: str
    pids: dict[str, int]
    # waits until the target is whole again before a measurement (HAProxy: every node UP)
    settle: Callable[[], None] | None = None

    def ready(self) -> None:
        if self.settle is not None:
            self.settle()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
