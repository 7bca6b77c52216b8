"""Synthetic DICOM instances with fresh UIDs (never real patient data), and pydicom's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


def pydicom_test_files() -> list[Path]:
    """Every DICOM test file that ships inside the pydicom package (no downloads)."""
    return sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())


@dataclass
class Spec:
    patient_id: str = "P0001"
    patient_name: str = "Doe^Jane"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    sop_uid: str = field(default_factory=generate_uid)
    modality: str = "CT"
    study_date: str = "20240115"
    study_time: str = "101500"
    accession: str = "ACC0001"
    study_description: str = "Synthetic study"
    series_description: str = "Synthetic series"
    series_number: int = 1
    instance_number: int = 1
    rows: int = 16
    columns: int = 16
    frames: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def make_dataset(spec: Spec) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = CTImageStorage if spec.modality == "CT" else MRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = spec.sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.StudyDescription = spec.study_description
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.Modality = spec.modality
    ds.SeriesDescription = spec.series_description
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = spec.instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    rng = np.random.default_rng(abs(hash(spec.sop_uid)) % 2**32)
    pixels = rng.integers(0, 4096, size=(spec.frames, spec.rows, spec.columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    return ds


def write_oversized(path: Path, patient_id: str = "BIG") -> tuple[Dataset, list[str]]:
    """An instance whose DICOM JSON is larger than a MongoDB document (~16 MiB of private
    text), and those texts."""
    ds = make_dataset(Spec(patient_id=patient_id))
    block = ds.private_block(0x0013, "CLOUDPACS BIG", create=True)
    big_values = ["x" * (4 * 1024 * 1024 + i) for i in range(4)]
    for i, value in enumerate(big_values):
        block.add_new(0x10 + i, "UT", value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds, big_values


def write_instance(path: Path, spec: Spec | None = None, **changes: Any) -> Spec:
    spec = spec or Spec(**changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_dataset(spec).save_as(path, enforce_file_format=True)
    return spec


def write_study(
    folder: Path, n_series: int = 2, per_series: int = 3, **common: Any
) -> list[tuple[Path, Spec]]:
    """A study of n_series x per_series instances written under `folder`."""
    study_uid = common.pop("study_uid", generate_uid())
    out = []
    for s in range(n_series):
        series_uid = generate_uid()
        for i in range(per_series):
            spec = Spec(
                study_uid=study_uid,
                series_uid=series_uid,
                series_number=s + 1,
                instance_number=i + 1,
                **common,
            )
            path = folder / f"{spec.sop_uid}.dcm"
            write_instance(path, spec)
            out.append((path, spec))
    return out


def study_date(days_ago: int) -> str:
    return (date(2024, 6, 1) - timedelta(days=days_ago)).strftime("%Y%m%d")


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def charset_samples(folder: Path) -> list[tuple[Path, Dataset]]:
    """pydicom's character-set samples (charset_files/*.dcm) made into valid Part 10 instances.

    The samples carry names in many character sets but no UIDs; we add UIDs and leave the
    encoded names untouched. Returns (path, original dataset) pairs."""
    out = []
    for source in sorted(Path(p) for p in get_charset_files() if p.endswith(".dcm")):
        ds = pydicom.dcmread(source, force=True)
        original = pydicom.dcmread(source, force=True)
        if "PatientName" not in original:
            continue
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / source.name
        ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
        out.append((path, original))
    return out


def write_invalid(path: Path, **changes: Any) -> None:
    """A Part 10 file whose base attributes are changed (possibly made invalid)."""
    ds = make_dataset(Spec())
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.preamble = b"\0" * 128
    pydicom.dcmwrite(path, ds, enforce_file_format=False)
