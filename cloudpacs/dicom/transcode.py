"""Transfer-syntax conversion for WADO-RS (PS3.18 8.7.3): pure and blocking, one instance.

Only the web default, Explicit VR Little Endian, is ever produced; everything else is either
sent exactly as stored (transfer-syntax=*) or refused with 406 by the caller.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from cloudpacs.dicom.frames import native_layout
from cloudpacs.dicom.jsonmodel import PIXEL_DATA, VALUE_ERRORS

EXPLICIT_LE = str(ExplicitVRLittleEndian)
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
NATIVE = {EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE}
# Bytes per word of the binary VRs whose values big endian encoding byte-swaps (PS3.5 7.3).
WORD_BYTES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
# What pydicom's decoders and writers raise on data they cannot handle.
CODEC_ERRORS = (RuntimeError, *VALUE_ERRORS)

# The media type of one compressed frame (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class TranscodeError(ValueError):
    """The instance or frame cannot be converted (no decoder copes with its data)."""


def can_make_explicit_le(stored: str) -> bool:
    """Whether an instance stored in `stored` can be sent as Explicit VR Little Endian."""
    if stored in NATIVE:
        return True
    if not UID(stored).is_compressed:
        return False
    try:
        return bool(get_decoder(stored).is_available)
    except NotImplementedError:
        return False


def to_explicit_le(data: bytes) -> bytes:
    """Re-encode a whole Part 10 file as Explicit VR Little Endian (decompressing pixels).

    Every attribute keeps its value, the SOP Instance UID included; raises TranscodeError."""
    try:
        return _to_explicit_le(data)
    except CODEC_ERRORS as exc:
        raise TranscodeError(f"cannot convert to Explicit VR Little Endian: {exc}") from exc


def _to_explicit_le(data: bytes) -> bytes:
    ds = pydicom.dcmread(BytesIO(data))
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored == EXPLICIT_LE:
        return data
    if UID(stored).is_compressed:
        # the decoded pixels are the same image: the instance keeps its identity
        ds.decompress(generate_instance_uid=False)
    # Parse every element now, so each is written from its value with a known VR (even
    # when the file's encoding differs from what its transfer syntax says)
    for _ in ds.iterall():
        pass
    if stored == EXPLICIT_BE:
        _swap_binary_values(ds)
    correct_ambiguous_vr(ds, True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


def _swap_binary_values(ds: Dataset) -> None:
    """Big -> little endian for the OW/OL/OF/OD/OV values pydicom keeps as raw bytes."""
    bits = int(ds.get("BitsAllocated", 0) or 0)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_binary_values(item)
        elif elem.VR in WORD_BYTES and elem.value:
            elem.value = swap_words(
                bytes(elem.value), word_size(elem.VR, elem.tag == PIXEL_DATA, bits)
            )


def word_size(vr: str, is_pixel_data: bool, bits_allocated: int) -> int:
    """The unit big endian encoding swaps in a value of this VR (1: nothing to swap).

    Pixel data of more than 16 bits is swapped per pixel sample, as pydicom reads it."""
    if is_pixel_data and vr == "OW" and bits_allocated > 16:
        return bits_allocated // 8
    return WORD_BYTES.get(vr, 1)


def swap_words(data: bytes, size: int) -> bytes:
    """Reverse the byte order of each `size`-byte word (a trailing partial word is kept)."""
    if size <= 1:
        return data
    whole = len(data) - len(data) % size
    words = np.frombuffer(data, dtype=f"u{size}", count=whole // size)
    return words.byteswap().tobytes() + data[whole:]


def decode_frame(attrs: dict[str, Any], stored: str, fragments: list[bytes]) -> bytes:
    """One compressed frame -> its uncompressed little-endian pixel bytes; raises
    TranscodeError."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(stored)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([b"".join(fragments)])
    ds["PixelData"].VR = "OB"
    try:
        array: np.ndarray[Any, Any] = ds.pixel_array
    except CODEC_ERRORS as exc:
        raise TranscodeError(f"cannot decode the frame: {exc}") from exc
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def element_bytes(data: bytes, path: str) -> bytes:
    """The raw value of the element at a bulk path ("7FE00010", "00540016/0/00181072")
    found by parsing the whole instance (for deflated instances, whose offsets are unknown)."""
    ds: Any = pydicom.dcmread(BytesIO(data))
    parts = path.split("/")
    for tag, index in zip(parts[:-1:2], parts[1::2], strict=True):
        ds = ds[int(tag, 16)].value[int(index)]
    value = ds[int(parts[-1], 16)].value
    return bytes(value)


def native_frames(data: bytes) -> list[bytes]:
    """The frames of a whole instance's native pixel data, found by parsing it (for deflated
    instances, whose offsets are unknown); empty when they are not byte-addressable."""
    ds = pydicom.dcmread(BytesIO(data))
    if PIXEL_DATA not in ds:
        return []
    pixels = bytes(ds.PixelData)
    layout = native_layout(ds, 0, len(pixels))
    if layout is None:
        return []
    return [b"".join(pixels[o : o + n] for o, n in frame) for frame in layout.frames]
