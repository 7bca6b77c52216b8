"""Dataset -> DICOM JSON model (PS3.18 Annex F), bulk data referenced instead of inlined.

Walks the dataset without loading deferred (large) values: a bulk element is described by
where its value lies in the file, so WADO-RS can later serve it by byte range.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.tag import BaseTag

from cloudpacs.errors import InvalidDicom

# Values of these VRs longer than the threshold become BulkDataURIs (PS3.18 F.2.7).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_THRESHOLD_BYTES = 1024
PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
UNKNOWN_OFFSET = -1  # a bulk value whose position in the file is not known
# Each sequence level is three levels of the stored document (element, Value, item), and
# MongoDB refuses documents nested deeper than 100 (FerretDB does not); real instances
# nest a handful.
MAX_SEQUENCE_DEPTH = 24

# pydicom raises any of these on malformed element values of untrusted input (OSError and
# EOFError: a sequence whose items run past the end of its value, read lazily).
VALUE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    UnicodeError,
    NotImplementedError,
    AttributeError,
    struct.error,
    BytesLengthException,
    EOFError,
    OSError,
)


@dataclass(frozen=True)
class BulkRef:
    """Where a bulk value lies in the stored file (length may be undefined for pixel data)."""

    offset: int
    length: int


@dataclass
class JsonResult:
    meta: dict[str, Any]
    bulk: dict[str, BulkRef] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def dataset_to_json(ds: Dataset) -> JsonResult:
    """The DICOM JSON of `ds` (file meta excluded), its bulk references and any warnings."""
    result = JsonResult(meta={})
    result.meta = _walk(ds, "", result)
    return result


def _walk(ds: Dataset, prefix: str, result: JsonResult, base: int | None = 0) -> dict[str, Any]:
    """`base`: where the value holding `ds` starts in the file (None: not known)."""
    if prefix.count("/") // 2 > MAX_SEQUENCE_DEPTH:
        raise InvalidDicom(f"sequences are nested deeper than {MAX_SEQUENCE_DEPTH} levels")
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag.group == 0x0002:
            continue
        key = tag_key(tag)
        path = f"{prefix}{key}"
        try:
            out[key] = _element_json(ds, tag, path, result, base)
        except VALUE_ERRORS as exc:
            result.warnings.append(f"{key}: value not decodable ({exc})"[:200])
            out[key] = {"vr": _vr_of(ds.get_item(tag, keep_deferred=True), tag) or "UN"}
    return out


def _element_json(
    ds: Dataset, tag: BaseTag, path: str, result: JsonResult, base: int | None
) -> dict[str, Any]:
    item = ds.get_item(tag, keep_deferred=True)
    vr = _vr_of(item, tag)
    # pydicom reads sequence items from the sequence's own value: the positions of their
    # elements are relative to where that value starts
    value_start = None
    if isinstance(item, RawDataElement) and base is not None:
        value_start = base + item.value_tell
    if isinstance(item, RawDataElement) and vr is not None:
        vr = _resolve_ambiguous(vr, ds, tag)
        is_bulk_size = item.length > BULK_THRESHOLD_BYTES or tag == PIXEL_DATA
        if vr in BULK_VRS and item.length and is_bulk_size:
            offset = UNKNOWN_OFFSET if value_start is None else value_start
            result.bulk[path] = BulkRef(offset=offset, length=item.length)
            return {"vr": vr, "BulkDataURI": f"bulkdata/{path}"}
    elem = ds[tag]
    if elem.VR == "SQ":
        items = [
            _walk(child, f"{path}/{index}/", result, value_start)
            for index, child in enumerate(elem.value)
        ]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    return _to_json(elem)


def _to_json(elem: DataElement) -> dict[str, Any]:
    as_json: dict[str, Any] = elem.to_json_dict(None, 0)
    return as_json


def _vr_of(item: DataElement | RawDataElement | Any, tag: BaseTag) -> str | None:
    vr = getattr(item, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _resolve_ambiguous(vr: str, ds: Dataset, tag: BaseTag) -> str:
    if " or " not in vr:
        return vr
    if tag == PIXEL_DATA:
        # only implicit VR leaves it ambiguous, and there native pixel data is OW (PS3.5 A.1)
        item = ds.get_item(tag, keep_deferred=True)
        encapsulated = isinstance(item, RawDataElement) and item.length == UNDEFINED_LENGTH
        return "OB" if encapsulated else "OW"
    return vr.split(" or ")[0]


def with_absolute_bulk_uris(meta: dict[str, Any], instance_url: str) -> dict[str, Any]:
    """A copy of `meta` whose relative BulkDataURIs point below `instance_url`."""
    out: dict[str, Any] = {}
    for tag, element in meta.items():
        uri = element.get("BulkDataURI")
        if uri is not None and not uri.startswith(("http://", "https://")):
            element = {**element, "BulkDataURI": f"{instance_url}/{uri}"}
        elif element.get("vr") == "SQ" and element.get("Value"):
            items = [with_absolute_bulk_uris(item, instance_url) for item in element["Value"]]
            element = {**element, "Value": items}
        out[tag] = element
    return out
