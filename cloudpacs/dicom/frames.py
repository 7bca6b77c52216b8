"""Where each pixel data frame lies in the file, so WADO-RS can read one frame by offset.

Native pixel data: frame i starts at offset + i * frame_size.
Encapsulated pixel data (PS3.5 A.4): each frame is one or more fragments (items); their
positions are found once at ingest, the grouping of fragments into frames is pydicom's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames

ITEM_TAG = 0xFFFEE000
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
# Reading a tag + length pair: (gggg,eeee) as two little-endian uint16, then a uint32 length.
_ITEM_HEADER = struct.Struct("<HHL")


@dataclass(frozen=True)
class PixelLayout:
    """Frames as lists of (offset, length) byte ranges in the stored file."""

    encapsulated: bool
    frames: list[list[tuple[int, int]]]
    # of the whole PixelData value: its items when encapsulated, not the sequence delimiter
    total_length: int


def native_layout(ds: Dataset, offset: int, length: int) -> PixelLayout | None:
    """Frame ranges of uncompressed pixel data, or None when frames are not byte-aligned."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not rows or not cols or not bits or (bits != 1 and bits % 8):
        return None
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # two samples per pixel of chroma-subsampled data (PS3.3 C.7.6.3.1.2)
    frame_bits = rows * cols * samples * bits
    if frame_bits % 8 and frames > 1:
        return None  # bit-packed frames that do not start on a byte boundary
    frame_size = (frame_bits + 7) // 8
    if frame_size * frames > length:
        return None
    ranges = [[(offset + i * frame_size, frame_size)] for i in range(frames)]
    return PixelLayout(encapsulated=False, frames=ranges, total_length=length)


def encapsulated_layout(fp: BinaryIO, offset: int, ds: Dataset) -> PixelLayout:
    """Fragment positions of encapsulated pixel data whose value starts at `offset` in `fp`."""
    fp.seek(offset)
    fragments: list[tuple[int, int]] = []
    first = True
    while True:
        header = fp.read(_ITEM_HEADER.size)
        if len(header) < _ITEM_HEADER.size:
            raise ValueError("encapsulated pixel data ends without a sequence delimiter")
        group, element, length = _ITEM_HEADER.unpack(header)
        tag = (group << 16) | element
        if tag == SEQUENCE_DELIMITER_TAG:
            total_length = fp.tell() - _ITEM_HEADER.size - offset
            break
        if tag != ITEM_TAG or length == 0xFFFFFFFF:
            raise ValueError(f"unexpected tag {tag:08X} in encapsulated pixel data")
        if not first:
            fragments.append((fp.tell(), length))
        first = False  # the first item is the Basic Offset Table
        fp.seek(length, 1)
    fp.seek(offset)
    number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
    extended = _extended_offsets(ds)
    if number_of_frames == 1:
        return PixelLayout(True, [fragments], total_length)
    frames: list[list[tuple[int, int]]] = []
    position = 0
    for frame in generate_fragmented_frames(
        fp, number_of_frames=number_of_frames, extended_offsets=extended
    ):
        frames.append(fragments[position : position + len(frame)])
        position += len(frame)
    return PixelLayout(True, frames, total_length)


def _extended_offsets(ds: Dataset) -> tuple[bytes, bytes] | None:
    offsets = ds.get("ExtendedOffsetTable")
    lengths = ds.get("ExtendedOffsetTableLengths")
    if offsets is None or lengths is None:
        return None
    return bytes(offsets), bytes(lengths)
