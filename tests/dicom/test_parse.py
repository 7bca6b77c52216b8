"""Parsing and validation of every DICOM file shipped with pydicom, and synthetic edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from cloudpacs.dicom.jsonmodel import BULK_THRESHOLD_BYTES, BULK_VRS
from cloudpacs.dicom.parse import parse_file
from cloudpacs.dicom.uids import uid_problem
from cloudpacs.errors import InvalidDicom
from tests.factory import (
    Spec,
    charset_samples,
    make_dataset,
    pydicom_test_files,
    write_instance,
    write_invalid,
)

ALL_FILES = pydicom_test_files()


def _outcome(path: Path) -> tuple[bool, str]:
    try:
        parse_file(path)
        return True, ""
    except InvalidDicom as exc:
        return False, str(exc)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_pydicom_file_parses_or_is_rejected_with_a_reason(path: Path) -> None:
    ok, reason = _outcome(path)
    if not ok:
        assert reason and len(reason) < 400
        return
    parsed = parse_file(path)
    ds = pydicom.dcmread(path)
    assert parsed.sop_uid == ds.SOPInstanceUID
    assert parsed.study_uid == ds.StudyInstanceUID
    assert parsed.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert parsed.size == path.stat().st_size


def test_most_pydicom_files_are_accepted() -> None:
    accepted = sum(_outcome(p)[0] for p in ALL_FILES)
    assert accepted >= 100, accepted


@pytest.mark.parametrize(
    "path",
    [p for p in ALL_FILES if _outcome(p)[0]],
    ids=lambda p: p.name,
)
def test_metadata_equals_what_pydicom_reads(path: Path) -> None:
    parsed = parse_file(path)
    ds = pydicom.dcmread(path)
    for elem in ds:
        key = f"{elem.tag:08X}"
        assert key in parsed.meta, key
        ours = parsed.meta[key]
        if "BulkDataURI" in ours:
            assert elem.VR in BULK_VRS or " or " in elem.VR
            offset, length = parsed.bulk[key].offset, parsed.bulk[key].length
            if length != 0xFFFFFFFF and offset >= 0:
                with path.open("rb") as fp:
                    fp.seek(offset)
                    assert fp.read(length) == elem.value
            continue
        if elem.VR == "SQ":
            assert len(ours.get("Value", [])) == len(elem.value)
            continue
        try:
            expected = elem.to_json_dict(None, BULK_THRESHOLD_BYTES)
        except Exception:  # noqa: BLE001 - pydicom cannot convert it either
            continue
        assert ours.get("Value") == expected.get("Value"), key
        assert ours.get("InlineBinary") == expected.get("InlineBinary"), key


def test_file_meta_group_is_not_in_metadata(tmp_path: Path) -> None:
    write_instance(tmp_path / "a.dcm")
    meta = parse_file(tmp_path / "a.dcm").meta
    assert not [k for k in meta if k.startswith("0002")]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"StudyInstanceUID": ""}, "StudyInstanceUID is missing"),
        ({"SeriesInstanceUID": "1.2.abc"}, "SeriesInstanceUID is not a valid UID"),
        ({"SOPInstanceUID": "1." + "2" * 70}, "SOPInstanceUID is longer than 64"),
        ({"SOPClassUID": "1.02.3"}, "SOPClassUID is not a valid UID"),
    ],
)
def test_base_attribute_problems_are_rejected_precisely(
    tmp_path: Path, change: dict[str, str], reason: str
) -> None:
    path = tmp_path / "bad.dcm"
    write_invalid(path, **change)
    with pytest.raises(InvalidDicom, match=reason):
        parse_file(path)


def test_empty_and_non_dicom_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "text.dcm").write_text("hello")
    (tmp_path / "truncated.dcm").write_bytes(ALL_FILES[0].read_bytes()[:200])
    with pytest.raises(InvalidDicom, match="empty file"):
        parse_file(tmp_path / "empty.dcm")
    with pytest.raises(InvalidDicom, match="not a DICOM Part 10 file"):
        parse_file(tmp_path / "text.dcm")
    with pytest.raises(InvalidDicom):
        parse_file(tmp_path / "truncated.dcm")


def test_size_limit(tmp_path: Path) -> None:
    write_instance(tmp_path / "a.dcm")
    with pytest.raises(InvalidDicom, match="over the 100-byte limit"):
        parse_file(tmp_path / "a.dcm", max_bytes=100)


def test_private_and_unknown_attributes_are_kept(tmp_path: Path) -> None:
    ds = make_dataset(Spec())
    block = ds.private_block(0x0011, "CLOUDPACS TEST", create=True)
    block.add_new(0x01, "LO", "private value")
    path = tmp_path / "p.dcm"
    ds.save_as(path, enforce_file_format=True)
    meta = parse_file(path).meta
    assert meta["00111001"]["Value"] == ["private value"]
    assert meta["00110010"]["Value"] == ["CLOUDPACS TEST"]


def test_native_multiframe_layout_points_at_each_frame(tmp_path: Path) -> None:
    spec = write_instance(tmp_path / "mf.dcm", frames=4, rows=8, columns=6)
    parsed = parse_file(tmp_path / "mf.dcm")
    assert parsed.pixels is not None and not parsed.pixels.encapsulated
    arr = pydicom.dcmread(tmp_path / "mf.dcm").pixel_array
    data = (tmp_path / "mf.dcm").read_bytes()
    assert len(parsed.pixels.frames) == spec.frames
    for i, frame in enumerate(parsed.pixels.frames):
        ((offset, length),) = frame
        assert data[offset : offset + length] == arr[i].astype("<u2").tobytes()


ENCAPSULATED = [
    p
    for p in ALL_FILES
    if _outcome(p)[0]
    and (parse_file(p).pixels or None) is not None
    and parse_file(p).pixels.encapsulated  # type: ignore[union-attr]
]


@pytest.mark.parametrize("path", ENCAPSULATED, ids=lambda p: p.name)
def test_encapsulated_frames_match_pydicom(path: Path) -> None:
    parsed = parse_file(path)
    assert parsed.pixels is not None
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = list(generate_frames(ds.PixelData, number_of_frames=frames))
    data = path.read_bytes()
    ours = [b"".join(data[o : o + n] for o, n in frame) for frame in parsed.pixels.frames]
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected, strict=True):
        # pydicom strips the trailing padding byte of odd-length JPEG frames; we keep it.
        assert mine.rstrip(b"\x00") == theirs.rstrip(b"\x00")


def test_uid_rules() -> None:
    assert uid_problem("1.2.840.10008.1.2") is None
    assert uid_problem("0.1") is None
    assert uid_problem("1.02") is not None
    assert uid_problem("1..2") is not None
    assert uid_problem("1.2.") is not None
    assert uid_problem("") is not None
    assert uid_problem(None) is not None
    assert uid_problem("1." + "1" * 63) is not None


def test_non_ascii_character_sets_round_trip_as_unicode(tmp_path: Path) -> None:
    samples = charset_samples(tmp_path)
    assert len(samples) >= 8
    for path, original in samples:
        parsed = parse_file(path)
        expected = original["PatientName"].to_json_dict(None, 0)["Value"]
        assert parsed.meta["00100010"]["Value"] == expected, path.name
        assert any(ord(c) > 127 for c in str(expected)), path.name
        assert parsed.keys["patient_name"], path.name


def test_search_keys_are_normalised(tmp_path: Path) -> None:
    write_instance(
        tmp_path / "a.dcm", patient_name="Müller^Jürgen", study_date="20230405", study_time="0930"
    )
    keys = parse_file(tmp_path / "a.dcm").keys
    assert keys["patient_name"] == ["MÜLLER^JÜRGEN"]
    assert keys["study_date"].strftime("%Y%m%d") == "20230405"
    assert keys["study_time"] == "093000.000000"
    assert keys["series_number"] == 1 and keys["instance_number"] == 1
    assert np.isfinite(len(keys))
