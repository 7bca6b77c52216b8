"""Deterministic synthetic DICOM corpus for the benchmarks (never real patient data).

CT series are 512x512 16-bit signed (an elliptic body with a spine disc, Gaussian noise),
MR series 256x256 16-bit unsigned (a head-like disc with a ring, Rician-ish noise), all
Explicit VR Little Endian. Patients have several studies spread over several years; every
study, series and instance has its own UID, derived from the seed (so reruns are identical).

    .venv/bin/python perf/corpus.py --instances 1200 --patients 20 --seed 7

Output: perf/out/corpus-n<instances>-p<patients>-s<seed>/ with the files under dicom/ and a
manifest.json describing every instance; an existing complete corpus is reused as is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.factory import Spec, make_dataset  # noqa: E402

OUT = REPO / "perf" / "out"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

FAMILY = [
    "SMITH",
    "MUELLER",
    "GARCIA",
    "ROSSI",
    "NOVAK",
    "DUBOIS",
    "TANAKA",
    "SILVA",
    "KOWALSKI",
    "JENSEN",
    "OKAFOR",
    "NGUYEN",
    "PETROV",
    "LINDQVIST",
    "MORENO",
]
GIVEN = [
    "ANNA",
    "BEN",
    "CLARA",
    "DAVID",
    "EMMA",
    "FELIX",
    "GRACE",
    "HUGO",
    "IRIS",
    "JONAS",
    "KAI",
    "LENA",
    "MAX",
    "NORA",
    "OSKAR",
]
CT_PROTOCOLS = [
    ("CT CHEST W/O CONTRAST", "CHEST", ["AXIAL 5MM", "AXIAL 1MM LUNG", "CORONAL MPR"]),
    ("CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN", ["AXIAL PORTAL VENOUS", "AXIAL DELAYED"]),
    ("CT HEAD W/O CONTRAST", "HEAD", ["AXIAL BRAIN", "AXIAL BONE"]),
]
MR_PROTOCOLS = [
    ("MR BRAIN W/WO CONTRAST", "BRAIN", ["T1 SAG", "T2 AX", "FLAIR AX", "T1 POST AX"]),
    ("MR KNEE", "KNEE", ["PD FS COR", "T1 COR", "PD FS SAG"]),
]


@dataclass(frozen=True)
class CorpusParams:
    instances: int = 1200
    patients: int = 20
    seed: int = 7

    @property
    def name(self) -> str:
        return f"corpus-n{self.instances}-p{self.patients}-s{self.seed}"


@dataclass
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass
class SeriesPlan:
    uid: str
    number: int
    description: str
    count: int


@dataclass
class StudyPlan:
    patient: Patient
    uid: str
    modality: str
    study_date: str
    study_time: str
    accession: str
    description: str
    body_part: str
    series: list[SeriesPlan] = field(default_factory=list)


@dataclass
class Corpus:
    folder: Path
    params: CorpusParams
    instances: list[dict[str, Any]]

    @property
    def files(self) -> list[Path]:
        return [self.folder / item["path"] for item in self.instances]

    @property
    def total_bytes(self) -> int:
        return sum(int(item["size"]) for item in self.instances)


def uid(seed: int, *parts: object) -> str:
    """A reproducible UID under 2.25 (UUID-derived root, PS3.5 B.2), unique per seed and parts."""
    text = "/".join(["cloudpacs-perf", str(seed), *map(str, parts)])
    return f"2.25.{int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], 'big') or 1}"


def pixel_seed(sop_uid: str) -> int:
    return int.from_bytes(hashlib.sha256(sop_uid.encode()).digest()[:8], "big")


# ---- the plan: who, when, what ----------------------------------------------------------
def make_patients(params: CorpusParams, rng: np.random.Generator) -> list[Patient]:
    patients = []
    for i in range(params.patients):
        family = FAMILY[i % len(FAMILY)]
        given = GIVEN[int(rng.integers(len(GIVEN)))]
        born = date(1940, 1, 1) + timedelta(days=int(rng.integers(0, 60 * 365)))
        patients.append(
            Patient(
                f"PERF{i + 1:04d}",
                f"{family}^{given}",
                born.strftime("%Y%m%d"),
                "F" if rng.random() < 0.5 else "M",
            )
        )
    return patients


def make_study(
    params: CorpusParams, rng: np.random.Generator, patient: Patient, k: int
) -> StudyPlan:
    modality = "CT" if rng.random() < 0.6 else "MR"
    protocols = CT_PROTOCOLS if modality == "CT" else MR_PROTOCOLS
    description, body_part, series_names = protocols[int(rng.integers(len(protocols)))]
    day = date(2016, 1, 1) + timedelta(days=int(rng.integers(0, 9 * 365)))
    minute = int(rng.integers(7 * 60, 19 * 60))
    study = StudyPlan(
        patient=patient,
        uid=uid(params.seed, "study", k),
        modality=modality,
        study_date=day.strftime("%Y%m%d"),
        study_time=f"{minute // 60:02d}{minute % 60:02d}{int(rng.integers(60)):02d}",
        accession=f"A{params.seed:02d}{k + 1:06d}",
        description=description,
        body_part=body_part,
    )
    n_series = int(rng.integers(1, len(series_names) + 1))
    low, high = (6, 13) if modality == "CT" else (5, 11)
    for s in range(n_series):
        study.series.append(
            SeriesPlan(
                uid(params.seed, "series", k, s),
                s + 1,
                series_names[s],
                int(rng.integers(low, high)),
            )
        )
    return study


def make_plan(params: CorpusParams) -> list[StudyPlan]:
    """Studies round-robin over the patients until exactly `instances` are planned."""
    rng = np.random.default_rng(params.seed)
    patients = make_patients(params, rng)
    studies: list[StudyPlan] = []
    total = 0
    while total < params.instances:
        study = make_study(params, rng, patients[len(studies) % len(patients)], len(studies))
        for series in study.series:
            series.count = min(series.count, params.instances - total)
            total += series.count
        study.series = [s for s in study.series if s.count > 0]
        studies.append(study)
    return studies


# ---- pixels -----------------------------------------------------------------------------
def ct_pixels(rng: np.random.Generator, size: int, slice_index: int) -> np.ndarray:
    """Hounsfield-like values stored with intercept -1024: air, soft tissue, a spine disc."""
    y, x = np.ogrid[:size, :size]
    c = size / 2
    body = ((x - c) / (size * 0.42)) ** 2 + ((y - c) / (size * 0.32)) ** 2 <= 1
    spine_r = size * (0.05 + 0.01 * np.sin(slice_index / 3))
    spine = (x - c) ** 2 + (y - c - size * 0.2) ** 2 <= spine_r**2
    hu = np.full((size, size), -1000.0)
    hu[body] = 40.0
    hu[spine] = 700.0
    hu += rng.normal(0, 12, size=(size, size))
    stored: np.ndarray = np.clip(hu + 1024, -2048, 32767).astype(np.int16)
    return stored


def mr_pixels(rng: np.random.Generator, size: int, slice_index: int) -> np.ndarray:
    y, x = np.ogrid[:size, :size]
    c = size / 2
    r2 = (x - c) ** 2 + (y - c) ** 2
    radius = size * (0.38 - 0.004 * abs(slice_index - 6))
    img = np.zeros((size, size))
    img[r2 <= radius**2] = 900.0
    img[(r2 <= (radius * 0.9) ** 2) & (r2 >= (radius * 0.8) ** 2)] = 400.0
    noisy = np.hypot(img + rng.normal(0, 25, img.shape), rng.normal(0, 25, img.shape))
    stored: np.ndarray = np.clip(noisy, 0, 4095).astype(np.uint16)
    return stored


# ---- instances --------------------------------------------------------------------------
def instance_extra(study: StudyPlan, series: SeriesPlan, i: int, seed: int) -> dict[str, Any]:
    p = study.patient
    thickness = 5.0 if study.modality == "CT" else 4.0
    extra: dict[str, Any] = {
        "PatientBirthDate": p.birth_date,
        "PatientSex": p.sex,
        "PatientAge": f"{max(0, int(study.study_date[:4]) - int(p.birth_date[:4])):03d}Y",
        "StudyID": study.accession[-4:],
        "InstitutionName": "Perf General Hospital",
        "Manufacturer": "CLOUDPACS-PERF",
        "ManufacturerModelName": "Synthetic 9000",
        "BodyPartExamined": study.body_part,
        "ProtocolName": study.description,
        "SeriesDate": study.study_date,
        "SeriesTime": study.study_time,
        "ContentDate": study.study_date,
        "ContentTime": study.study_time,
        "AcquisitionNumber": 1,
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "FrameOfReferenceUID": uid(seed, "for", series.uid),
        "ImagePositionPatient": [-160.0, -160.0, -i * thickness],
        "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "SliceThickness": thickness,
        "SliceLocation": -i * thickness,
        "PositionReferenceIndicator": "",
        "PatientPosition": "HFS",
        "BitsStored": 16 if study.modality == "CT" else 12,
        "HighBit": 15 if study.modality == "CT" else 11,
    }
    if study.modality == "CT":
        extra.update(
            PixelSpacing=[0.625, 0.625],
            PixelRepresentation=1,
            RescaleIntercept=-1024,
            RescaleSlope=1,
            RescaleType="HU",
            WindowCenter=40,
            WindowWidth=400,
            KVP=120,
            XRayTubeCurrent=220,
            ConvolutionKernel="STANDARD",
        )
    else:
        extra.update(
            PixelSpacing=[0.9375, 0.9375],
            WindowCenter=600,
            WindowWidth=1200,
            MagneticFieldStrength=3.0,
            EchoTime=12.0,
            RepetitionTime=2500.0,
            ScanningSequence="SE",
            SequenceVariant="SK",
            ScanOptions="",
            MRAcquisitionType="2D",
        )
    return extra


def instance_spec(study: StudyPlan, series: SeriesPlan, i: int, seed: int, size: int) -> Spec:
    """The attributes of instance `i` of a series (pixels `size` x `size`, not filled in)."""
    return Spec(
        patient_id=study.patient.patient_id,
        patient_name=study.patient.name,
        study_uid=study.uid,
        series_uid=series.uid,
        sop_uid=uid(seed, "sop", series.uid, i),
        modality=study.modality,
        study_date=study.study_date,
        study_time=study.study_time,
        accession=study.accession,
        study_description=study.description,
        series_description=series.description,
        series_number=series.number,
        instance_number=i + 1,
        rows=size,
        columns=size,
        extra=instance_extra(study, series, i, seed),
    )


def write_one(
    folder: Path, study: StudyPlan, series: SeriesPlan, i: int, seed: int
) -> dict[str, Any]:
    size = 512 if study.modality == "CT" else 256
    spec = instance_spec(study, series, i, seed, size)
    sop_uid = spec.sop_uid
    ds = make_dataset(spec)
    rng = np.random.default_rng([seed, pixel_seed(sop_uid)])
    make = ct_pixels if study.modality == "CT" else mr_pixels
    ds.PixelData = make(rng, size, i).tobytes()
    rel = Path(study.patient.patient_id) / study.accession / f"{series.number:02d}-{i + 1:04d}.dcm"
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return manifest_row(str(rel), path.stat().st_size, study, series, sop_uid)


def manifest_row(
    rel: str, size: int, study: StudyPlan, series: SeriesPlan, sop_uid: str
) -> dict[str, Any]:
    """What the manifest records of one instance file."""
    return {
        "path": rel,
        "size": size,
        "sop": sop_uid,
        "series": series.uid,
        "study": study.uid,
        "patient_id": study.patient.patient_id,
        "patient_name": study.patient.name,
        "modality": study.modality,
        "study_date": study.study_date,
    }


def generate(params: CorpusParams, target: Path) -> list[dict[str, Any]]:
    items = []
    for study in make_plan(params):
        for series in study.series:
            for i in range(series.count):
                items.append(write_one(target, study, series, i, params.seed))
    return items


def ensure_corpus(params: CorpusParams, out: Path = OUT, log: bool = True) -> Corpus:
    """The corpus for `params`, generated once (atomically) and then reused."""
    folder = out / params.name
    manifest = folder / MANIFEST
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("format") == FORMAT_VERSION:
            return Corpus(folder / "dicom", params, data["instances"])
    partial = out / f".{params.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    items = generate(params, partial / "dicom")
    (partial / MANIFEST).write_text(
        json.dumps({"format": FORMAT_VERSION, "params": asdict(params), "instances": items})
    )
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    if log:
        mb = sum(i["size"] for i in items) / 1e6
        print(
            f"corpus: {len(items)} instances, {mb:.0f} MB in {time.perf_counter() - started:.1f}s"
            f" -> {folder}",
            file=sys.stderr,
        )
    return Corpus(folder / "dicom", params, items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=CorpusParams.instances)
    parser.add_argument("--patients", type=int, default=CorpusParams.patients)
    parser.add_argument("--seed", type=int, default=CorpusParams.seed)
    args = parser.parse_args()
    corpus = ensure_corpus(CorpusParams(args.instances, args.patients, args.seed))
    studies = {i["study"] for i in corpus.instances}
    series = {i["series"] for i in corpus.instances}
    print(
        f"{corpus.folder}: {len(corpus.instances)} instances, {len(series)} series, "
        f"{len(studies)} studies, {corpus.total_bytes / 1e6:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
