"""A DICOM file on disk -> a validated ParsedInstance. Blocking: call it from a worker thread.

Validation is of the base format only (PS3.10 file, the four identifying UIDs well formed);
every other attribute is kept as it comes.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from cloudpacs.dicom.frames import PixelLayout, encapsulated_layout, native_layout
from cloudpacs.dicom.jsonmodel import (
    PIXEL_DATA,
    UNDEFINED_LENGTH,
    VALUE_ERRORS,
    BulkRef,
    dataset_to_json,
    tag_key,
)
from cloudpacs.dicom.keys import search_keys
from cloudpacs.dicom.transcode import DEFLATED_LE
from cloudpacs.dicom.uids import uid_problem
from cloudpacs.errors import InvalidDicom

HASH_CHUNK_BYTES = 1024 * 1024
UNKNOWN_OFFSET = -1  # bulk value whose position in the file is not known (deflated)
# Values larger than this are not read into memory while parsing (see jsonmodel).
DEFER_SIZE_BYTES = 1024
TOO_DEEP = "sequences are nested too deeply to read"

REQUIRED_UIDS = (
    ("StudyInstanceUID", "study"),
    ("SeriesInstanceUID", "series"),
    ("SOPInstanceUID", "sop"),
    ("SOPClassUID", "sop_class"),
)


@dataclass
class ParsedInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    sha256: str
    size: int
    meta: dict[str, Any]
    keys: dict[str, Any]
    bulk: dict[str, BulkRef]
    pixels: PixelLayout | None
    warnings: list[str] = field(default_factory=list)


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fp:
        while chunk := fp.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def parse_file(path: Path, max_bytes: int | None = None) -> ParsedInstance:
    """Parse and validate one DICOM file; raises InvalidDicom with a precise reason."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidDicom(f"cannot read file: {exc.strerror}") from exc
    if size == 0:
        raise InvalidDicom("empty file (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise InvalidDicom(f"file is {size} bytes, over the {max_bytes}-byte limit")
    digest, size = sha256_of(path)
    try:
        return _parse(path, digest, size)
    except RecursionError:
        # pydicom reads sequences (and we walk them) recursively
        raise InvalidDicom(TOO_DEEP) from None


def _parse(path: Path, digest: str, size: int) -> ParsedInstance:
    ds = _read(path)
    uids = _validated_uids(ds)
    try:
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    except VALUE_ERRORS as exc:
        raise InvalidDicom(f"TransferSyntaxUID (0002,0010) is unreadable: {exc}"[:300]) from exc
    if problem := uid_problem(transfer_syntax):
        raise InvalidDicom(f"TransferSyntaxUID (0002,0010) {problem}")
    json_result = dataset_to_json(ds)
    if transfer_syntax == DEFLATED_LE:
        # Offsets point into the inflated stream, not the file: bulk data and frames of
        # deflated instances are served by parsing the whole instance instead.
        bulk = {path: BulkRef(UNKNOWN_OFFSET, ref.length) for path, ref in json_result.bulk.items()}
        json_result.bulk, pixels = bulk, None
    else:
        pixels = _pixel_layout(path, ds, json_result.bulk.get(tag_key(PIXEL_DATA)))
    return ParsedInstance(
        study_uid=uids["study"],
        series_uid=uids["series"],
        sop_uid=uids["sop"],
        sop_class_uid=uids["sop_class"],
        transfer_syntax=transfer_syntax,
        sha256=digest,
        size=size,
        meta=json_result.meta,
        keys=search_keys(json_result.meta),
        bulk=json_result.bulk,
        pixels=pixels,
        warnings=json_result.warnings,
    )


def _read(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, defer_size=DEFER_SIZE_BYTES)
    except InvalidDicomError as exc:
        raise InvalidDicom(
            "not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble "
            "or no File Meta Information"
        ) from exc
    except (zlib.error, *VALUE_ERRORS) as exc:  # zlib: a broken deflated dataset
        raise InvalidDicom(f"unreadable DICOM: {exc}"[:300]) from exc


def _validated_uids(ds: pydicom.Dataset) -> dict[str, str]:
    uids: dict[str, str] = {}
    for keyword, name in REQUIRED_UIDS:
        try:
            value = ds.get(keyword)
        except VALUE_ERRORS as exc:
            raise InvalidDicom(f"{keyword} is unreadable: {exc}"[:300]) from exc
        value = str(value).strip("\x00 ") if value is not None else None
        if problem := uid_problem(value):
            raise InvalidDicom(f"{keyword} {problem}")
        assert value is not None
        uids[name] = value
    return uids


def _pixel_layout(path: Path, ds: pydicom.Dataset, ref: BulkRef | None) -> PixelLayout | None:
    if ref is None:
        return None
    try:
        if ref.length != UNDEFINED_LENGTH:
            return native_layout(ds, ref.offset, ref.length)
        with path.open("rb") as fp:
            return encapsulated_layout(fp, ref.offset, ds)
    except VALUE_ERRORS as exc:
        raise InvalidDicom(f"malformed pixel data: {exc}") from exc
