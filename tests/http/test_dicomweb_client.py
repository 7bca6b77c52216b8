"""A standard client, dicomweb-client (requests underneath), against the real server.

requests is synchronous: every call runs in a worker thread so that the aiohttp server,
in this test's event loop, keeps answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from cloudpacs.runtime import Runtime
from tests.factory import Spec, make_dataset
from tests.http.test_wado import Client, assert_same_attributes, pydicom_file

T = TypeVar("T")
EXPLICIT_LE = "1.2.840.10008.1.2.1"


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(function, *args, **kwargs)


@pytest.fixture
def web(client: Client) -> Iterator[DICOMwebClient]:
    session = requests.Session()
    session.trust_env = False  # straight to the loopback server, whatever the environment
    yield DICOMwebClient(url=str(client.make_url("/dicomweb")), session=session, timeout=30)
    session.close()


def as_part10(ds: Dataset) -> Dataset:
    """`ds` as it reads back from a Part 10 file (what any receiver compares against)."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(out.getvalue()))


def study(patient_id: str) -> list[Dataset]:
    """Two series: two single-frame instances, and one 4-frame instance, as read from Part 10
    files (dicomweb-client writes datasets as they are: without a preamble and 'DICM' prefix,
    which STOW-RS refuses, they would not be Part 10 files)."""
    first, second = Spec(patient_id=patient_id), Spec(patient_id=patient_id)
    specs = [
        first,
        Spec(
            patient_id=patient_id,
            study_uid=first.study_uid,
            series_uid=first.series_uid,
            instance_number=2,
        ),
        Spec(
            patient_id=patient_id,
            study_uid=first.study_uid,
            series_uid=second.series_uid,
            series_number=2,
            frames=4,
            modality="CT",
        ),
    ]
    return [as_part10(make_dataset(spec)) for spec in specs]


def uid(item: dict[str, Any], tag: str) -> str:
    return str(item[tag]["Value"][0])


async def test_store_search_and_retrieve_with_dicomweb_client(
    runtime: Runtime, web: DICOMwebClient
) -> None:
    datasets = study("DWC-1")
    noise = study("DWC-2")  # another patient's study: never in the answers below
    study_uid = datasets[0].StudyInstanceUID
    answer = await call(web.store_instances, datasets=datasets)
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    assert "FailedSOPSequence" not in answer
    await call(web.store_instances, datasets=noise, study_instance_uid=noise[0].StudyInstanceUID)

    studies = await call(
        web.search_for_studies, search_filters={"PatientID": "DWC-1"}, fuzzymatching=False
    )
    assert [uid(s, "0020000D") for s in studies] == [study_uid]
    assert studies[0]["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert studies[0]["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    series = await call(web.search_for_series, study_instance_uid=study_uid, fuzzymatching=False)
    assert sorted(uid(s, "0020000E") for s in series) == sorted(
        {ds.SeriesInstanceUID for ds in datasets}
    )
    series_uid = datasets[0].SeriesInstanceUID
    instances = await call(
        web.search_for_instances,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        search_filters={"InstanceNumber": 2},
        fuzzymatching=False,
    )
    assert [uid(i, "00080018") for i in instances] == [datasets[1].SOPInstanceUID]
    everywhere = await call(
        web.search_for_instances, search_filters={"PatientID": "DWC-2"}, fuzzymatching=False
    )
    assert sorted(uid(i, "00080018") for i in everywhere) == sorted(
        ds.SOPInstanceUID for ds in noise
    )

    retrieved = await call(web.retrieve_instance, study_uid, series_uid, datasets[0].SOPInstanceUID)
    expected = as_part10(datasets[0])
    assert_same_attributes(retrieved, expected)
    assert retrieved.PixelData == expected.PixelData

    metadata = await call(web.retrieve_study_metadata, study_uid)
    assert sorted(uid(m, "00080018") for m in metadata) == sorted(
        ds.SOPInstanceUID for ds in datasets
    )
    for item in metadata:
        assert item["00100020"]["Value"] == ["DWC-1"]
        assert item["7FE00010"]["BulkDataURI"].startswith("http://")

    series_datasets = await call(web.retrieve_series, study_uid, series_uid)
    assert sorted(ds.SOPInstanceUID for ds in series_datasets) == sorted(
        ds.SOPInstanceUID for ds in datasets[:2]
    )

    multiframe = datasets[2]
    frames = await call(
        web.retrieve_instance_frames,
        study_uid,
        multiframe.SeriesInstanceUID,
        multiframe.SOPInstanceUID,
        frame_numbers=[1, 3],
        media_types=("application/octet-stream",),
    )
    pixels = as_part10(multiframe).pixel_array
    assert frames == [pixels[0].astype("<u2").tobytes(), pixels[2].astype("<u2").tobytes()]

    (item,) = [m for m in metadata if uid(m, "00080018") == multiframe.SOPInstanceUID]
    # dicomweb-client sends "Host: 127.0.0.1", without the port (web.py, _http_get), and the
    # server builds absolute BulkDataURIs from the Host header: take the path, our authority
    path = urlsplit(item["7FE00010"]["BulkDataURI"]).path
    assert path.endswith(f"/instances/{multiframe.SOPInstanceUID}/bulkdata/7FE00010")
    bulk = await call(web.retrieve_bulkdata, f"{web.base_url.removesuffix('/dicomweb')}{path}")
    assert bulk == [multiframe.PixelData]


async def test_compressed_instance_with_dicomweb_client(
    runtime: Runtime, web: DICOMwebClient
) -> None:
    path = pydicom_file("JPEG2000.dcm")
    original = pydicom.dcmread(path)
    answer = await call(web.store_instances, datasets=[original])
    assert len(answer.ReferencedSOPSequence) == 1
    ids = (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)
    decoded = await call(
        web.retrieve_instance, *ids, media_types=(("application/dicom", EXPLICIT_LE),)
    )
    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(decoded.pixel_array, original.pixel_array)
    as_stored = await call(web.retrieve_instance, *ids)  # dicomweb-client asks for "*"
    assert as_stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert as_stored.PixelData == original.PixelData
    (frame,) = await call(
        web.retrieve_instance_frames,
        *ids,
        frame_numbers=[1],
        media_types=("application/octet-stream",),
    )
    assert frame == original.pixel_array.tobytes()
    metadata = await call(web.retrieve_instance_metadata, *ids)
    assert metadata["00080018"]["Value"] == [original.SOPInstanceUID]
