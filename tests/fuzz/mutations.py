"""Hypothesis strategies for hostile inputs: valid DICOM files mutated (byte flips,
truncations, inserted and duplicated elements, bogus lengths), deeply nested sequences, and
multipart/related bodies with random boundaries, headers, part counts and truncations."""

from __future__ import annotations

import functools
import struct
from io import BytesIO
from pathlib import Path

from hypothesis import strategies as st

from tests.factory import Spec, make_dataset, pydicom_test_files

# pydicom's files that cloudpacs stores, chosen for variety: explicit/implicit/big endian,
# deflated, encapsulated (RLE, JPEG 2000), nested sequences (RT plan, SR)
SEED_NAMES = (
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "SC_rgb_rle_2frame.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
)
HEAD_BYTES = 2048  # most element headers of the seeds are here
BOGUS_LENGTHS = (0, 1, 2, 3, 0xFFFF, 0xFFFE, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF)
ITEM = b"\xfe\xff\x00\xe0"
ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def fixed_spec(**changes: object) -> Spec:
    """Fixed UIDs: the same bytes in every run, as replaying examples needs."""
    uids = {"study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5", "sop_uid": "1.2.3.4.5.6"}
    return Spec(**uids, **changes)  # type: ignore[arg-type]


@functools.cache
def seeds() -> tuple[bytes, ...]:
    by_name = {p.name: p for p in pydicom_test_files()}
    synthetic = BytesIO()
    make_dataset(fixed_spec(frames=2, rows=4, columns=4)).save_as(
        synthetic, enforce_file_format=True
    )
    return (synthetic.getvalue(), *(Path(by_name[n]).read_bytes() for n in SEED_NAMES))


@st.composite
def _position(draw: st.DrawFn, size: int) -> int:
    return draw(st.one_of(st.integers(0, min(size, HEAD_BYTES)), st.integers(0, size)))


@st.composite
def mutated_dicom(draw: st.DrawFn) -> bytes:
    """A seed file with one to four mutations."""
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "truncate", "insert", "duplicate", "length", "cut")))
        pos = draw(_position(len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "duplicate":  # often a whole element, repeated
            length = draw(st.integers(1, 96))
            data[pos:pos] = data[draw(_position(len(data))) :][:length]
        elif op == "length":
            width = draw(st.sampled_from((2, 4)))
            value = draw(st.sampled_from(BOGUS_LENGTHS)) & (0xFFFF if width == 2 else 0xFFFFFFFF)
            data[pos : pos + width] = value.to_bytes(width, "little")
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def nested_sequences(depth: int, defined: bool) -> bytes:
    """A valid synthetic instance ending in a ContentSequence nested `depth` levels deep,
    with undefined or defined lengths."""
    ds = make_dataset(fixed_spec(rows=2, columns=2))
    del ds.PixelData
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    inner = _explicit(0x0040, 0xA040, b"CS", b"TEXT")
    for _ in range(depth):
        if defined:
            item = ITEM + struct.pack("<I", len(inner)) + inner
            inner = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00"
            inner += struct.pack("<I", len(item)) + item
        else:
            item = ITEM + b"\xff\xff\xff\xff" + inner + ITEM_END
            inner = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00\xff\xff\xff\xff"
            inner += item + SEQUENCE_END
    return out.getvalue() + inner


@st.composite
def deep_sequences(draw: st.DrawFn) -> bytes:
    """Sequences nested up to 3000 levels, sometimes truncated."""
    data = nested_sequences(draw(st.integers(1, 3000)), draw(st.booleans()))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def dicom_inputs() -> st.SearchStrategy[bytes]:
    return st.one_of(mutated_dicom(), mutated_dicom(), deep_sequences())


# ---- multipart/related ------------------------------------------------------------------
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
PART_TYPES = (
    "application/dicom",
    "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
    "APPLICATION/DICOM",
    "application/dicom+json",
    "text/plain",
    "multipart/related; boundary=inner",
    "",
    ";;;",
    "application/dicom; charset=\x00",
)
EXTRA_HEADERS = (
    "Content-Location: /x",
    "Content-Transfer-Encoding: base64",
    "Content-Transfer-Encoding: quoted-printable",
    "Content-Encoding: gzip",
    "Content-Encoding: deflate",
    "Content-Disposition: attachment; filename*=UTF-8''%ff%fe",
    "Content-Length: 99999999",
    "Content-Length: -1",
    "no colon here",
    "X-Long: " + "a" * 9000,
    ": empty name",
)


@st.composite
def boundaries(draw: st.DrawFn) -> str:
    text = draw(st.text(BCHARS, min_size=1, max_size=70))
    return text.rstrip(" ") or "b"


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """(body, Content-Type): mostly well framed, then damaged in a few ways."""
    boundary = draw(boundaries())
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        headers = []
        if draw(st.booleans()):
            headers.append("Content-Type: " + draw(st.sampled_from(PART_TYPES)))
        headers += draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2))
        payload = draw(
            st.one_of(
                st.binary(max_size=64),
                st.sampled_from(seeds()[:2]),
                mutated_dicom(),
                st.just(b"\r\n--" + boundary.encode() + b"\r\n"),
            )
        )
        head = "".join(h + "\r\n" for h in headers)
        parts.append(f"--{boundary}\r\n{head}\r\n".encode("latin-1") + payload + b"\r\n")
    closing = draw(st.sampled_from((f"--{boundary}--\r\n", f"--{boundary}--", "", "--")))
    body = b"".join(parts) + closing.encode("latin-1")
    if draw(st.booleans()):
        body = draw(st.sampled_from((b"", b"preamble\r\n", b"\r\n"))) + body
    if draw(st.integers(0, 5)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    if draw(st.integers(0, 5)) == 0 and body:
        pos = draw(st.integers(0, len(body) - 1))
        body = body[:pos] + bytes([draw(st.integers(0, 255))]) + body[pos + 1 :]
    quoted = draw(st.booleans())
    declared = boundary if draw(st.integers(0, 4)) else draw(boundaries())
    param = f'"{declared}"' if quoted else declared
    if draw(st.integers(0, 2)):
        return body, f'multipart/related; type="application/dicom"; boundary={param}'
    content_type = draw(
        st.sampled_from(
            (
                f"multipart/related; boundary={param}",
                f'multipart/related; type="application/dicom"; boundary={param}; start=x',
                'multipart/related; type="application/dicom"',
                f"multipart/related; boundary={param}; boundary=other",
            )
        )
    )
    return body, content_type
