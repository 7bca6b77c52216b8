"""Transfer-syntax conversion for WADO-RS (PS3.18 8.7.3): pure and blocking, one instance.

Only the web default, Explicit VR Little Endian, is ever produced; everything else is either
sent exactly as stored (transfer-syntax=*) or refused with 406 by the caller.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

EXPLICIT_LE = str(ExplicitVRLittleEndian)
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
NATIVE = {EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE}

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
    """Re-encode a whole Part 10 file as Explicit VR Little Endian (decompressing pixels)."""
    ds = pydicom.dcmread(BytesIO(data))
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored == EXPLICIT_LE:
        return data
    if UID(stored).is_compressed:
        ds.decompress()
    elif stored == EXPLICIT_BE and "PixelData" in ds:
        array = ds.pixel_array
        ds.PixelData = array.astype(array.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    # force_encoding re-encodes every element from its value (big -> little endian); the
    # file meta read from the original is kept, so the output is still a Part 10 file
    force = stored == EXPLICIT_BE
    dcmwrite(
        out, ds, enforce_file_format=not force, implicit_vr=False, little_endian=True,
        force_encoding=force,
    )
    return out.getvalue()


def decode_frame(attrs: dict[str, Any], stored: str, fragments: list[bytes]) -> bytes:
    """One compressed frame -> its uncompressed little-endian pixel bytes."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(stored)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([b"".join(fragments)])
    ds["PixelData"].VR = "OB"
    array: np.ndarray[Any, Any] = ds.pixel_array
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
