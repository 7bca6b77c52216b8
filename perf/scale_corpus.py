"""Deterministic small DICOM instances for the scale runs (never real patient data).

The realistic pieces (patients, protocols, dates, UIDs, per-instance attributes) come from
perf/corpus.py; what differs is the size: 8x8 pixels (a few KB per file) and 50-200 instances
per study, so that 100,000 instances fit on disk and load in minutes. Study k depends only on
(seed, k), and each patient's studies are consecutive, so any prefix of studies is a
self-contained archive: the sizes of a scale run are prefixes of one sequence of studies.

    from scale_corpus import ScaleCorpus
    corpus = ScaleCorpus(seed=7)
    studies = corpus.plan(10_000)            # whole studies until >= 10,000 instances
    rows = corpus.files(studies[0])          # written once under perf/out/scale-corpus-s7/

Written ahead (the loader then only parses; last study first, so that a loader starting
meanwhile from the first one meets it late; a file is renamed into place whole, so the two
may even write the same study):

    .venv/bin/python perf/scale_corpus.py --instances 1000000 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from corpus import (
    OUT,
    CorpusParams,
    Patient,
    SeriesPlan,
    StudyPlan,
    instance_spec,
    make_patients,
    make_study,
    manifest_row,
    pixel_seed,
)

from tests.factory import make_dataset

PIXELS = 8  # rows = columns: metadata is what a scale run measures
STUDY_INSTANCES = (50, 201)  # instances per study, uniform in [low, high)
PATIENT_STUDIES = (1, 6)  # consecutive studies per patient, uniform in [low, high)
MAX_PATIENTS = 9999  # PERF0001..PERF9999 (corpus.py's ID format); ~1.4M instances
STUDY_MANIFEST = "instances.json"


@dataclass(frozen=True)
class ScaleStudy:
    index: int
    plan: StudyPlan

    @property
    def instances(self) -> int:
        return sum(s.count for s in self.plan.series)


@dataclass
class ScaleCorpus:
    seed: int = 7
    out: Path = OUT
    _studies: list[ScaleStudy] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.out / f"scale-corpus-s{self.seed}"

    @cached_property
    def patients(self) -> list[Patient]:
        params = CorpusParams(instances=0, patients=MAX_PATIENTS, seed=self.seed)
        return make_patients(params, np.random.default_rng([self.seed, 0]))

    def _patient_of(self) -> Iterator[Patient]:
        rng = np.random.default_rng([self.seed, 1])
        for patient in self.patients:
            for _ in range(int(rng.integers(*PATIENT_STUDIES))):
                yield patient

    def plan(self, instances: int) -> list[ScaleStudy]:
        """The first whole studies holding at least `instances` instances."""
        owners = self._patient_of()
        for _ in range(len(self._studies)):
            next(owners)
        while sum(s.instances for s in self._studies) < instances:
            self._studies.append(self._study(len(self._studies), next(owners)))
        total, out = 0, []
        for study in self._studies:
            if total >= instances:
                break
            out.append(study)
            total += study.instances
        return out

    def _study(self, k: int, patient: Patient) -> ScaleStudy:
        rng = np.random.default_rng([self.seed, 2, k])
        params = CorpusParams(instances=0, patients=MAX_PATIENTS, seed=self.seed)
        plan = make_study(params, rng, patient, k)
        total = int(rng.integers(*STUDY_INSTANCES))
        n = len(plan.series)
        for i, series in enumerate(plan.series):
            series.count = total // n + (1 if i < total % n else 0)
        return ScaleStudy(k, plan)

    def light(self) -> ScaleCorpus:
        """The same corpus without its plan: what is pickled per task to worker processes."""
        return ScaleCorpus(self.seed, self.out)

    def study_folder(self, study: ScaleStudy) -> Path:
        return self.folder / f"{study.index:06d}"

    def files(self, study: ScaleStudy) -> list[dict[str, Any]]:
        """Manifest rows of the study's files (as perf/corpus.py writes them), written once."""
        folder = self.study_folder(study)
        manifest = folder / STUDY_MANIFEST
        if manifest.exists():
            rows: list[dict[str, Any]] = json.loads(manifest.read_text())
            return rows
        rows = [
            write_small(folder, study.plan, series, i, self.seed)
            for series in study.plan.series
            for i in range(series.count)
        ]
        partial = manifest.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(rows))
        partial.rename(manifest)
        return rows


def write_small(
    folder: Path, study: StudyPlan, series: SeriesPlan, i: int, seed: int
) -> dict[str, Any]:
    """One instance with perf/corpus.py's attributes and 8x8 pixels from the seed."""
    spec = instance_spec(study, series, i, seed, PIXELS)
    sop_uid = spec.sop_uid
    path = folder / f"{series.number:02d}-{i + 1:04d}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(spec)
    rng = np.random.default_rng([seed, pixel_seed(sop_uid)])  # make_dataset's pixels use hash()
    ds.PixelData = rng.integers(0, 4096, (PIXELS, PIXELS), dtype=np.uint16).tobytes()
    partial = path.with_suffix(f".{os.getpid()}.partial")
    ds.save_as(partial, enforce_file_format=True)
    partial.rename(path)
    rel = str(path.relative_to(folder.parent))
    return manifest_row(rel, path.stat().st_size, study, series, sop_uid)


def _write_study(corpus: ScaleCorpus, study: ScaleStudy) -> int:
    return len(corpus.files(study))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the scale corpus ahead of a run")
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    corpus = ScaleCorpus(args.seed)
    studies = corpus.plan(args.instances)
    light = corpus.light()
    written = 0
    with ProcessPoolExecutor(args.workers) as pool:
        for n, count in enumerate(pool.map(_write_study, [light] * len(studies), studies[::-1])):
            written += count
            if n % 500 == 0:
                print(f"{n}/{len(studies)} studies, {written} instances", file=sys.stderr)
    print(f"{len(studies)} studies, {written} instances in {corpus.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
