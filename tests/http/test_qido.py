"""QIDO-RS against a real FerretDB: every matching rule, all levels, paging, return keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from cloudpacs.dicom import levels as t
from cloudpacs.dicom.levels import Level
from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from tests.factory import Spec, charset_samples, write_instance

PRIVATE_CREATOR = "CLOUDPACS TEST"


class Archive:
    """A small controlled archive: three patients, four studies."""

    def __init__(self) -> None:
        self.specs: list[Spec] = []

    def study(self, name: str) -> str:
        return {s.accession: s.study_uid for s in self.specs}[name]


async def _ingest(runtime: Runtime, folder: Path, specs: list[Spec]) -> None:
    for spec in specs:
        path = folder / f"{spec.sop_uid}.dcm"
        write_instance(path, spec)
        result = await runtime.ingestor.ingest(path, Source("test"))
        assert result.outcome is Outcome.STORED, result.reason


@pytest.fixture
async def archive(runtime: Runtime, tmp_path: Path) -> Archive:
    a = Archive()
    s1 = Spec(
        patient_id="P1",
        patient_name="Doe^Jane",
        accession="A1",
        study_date="20200115",
        study_time="101500",
        study_description="Head CT",
    )
    s2 = Spec(
        patient_id="P1",
        patient_name="Doe^Jane",
        accession="A2",
        study_date="20210620",
        study_time="080000",
        modality="MR",
        study_description="Knee MR",
    )
    s3 = Spec(
        patient_id="P2",
        patient_name="Roe^Richard",
        accession="A3",
        study_date="20221231",
        study_time="235959",
        study_description="Chest",
    )
    s4 = Spec(
        patient_id="P3",
        patient_name="Müller^Jürgen",
        accession="A4",
        study_date="20190301",
        study_description="Schädel",
    )
    from pydicom.uid import generate_uid

    def more(base: Spec, n: int, series_uid: str | None = None, **kw: Any) -> list[Spec]:
        out = []
        series_uid = series_uid or generate_uid()
        for i in range(n):
            values = {
                **base.__dict__,
                "sop_uid": generate_uid(),
                "series_uid": series_uid,
                "instance_number": i + 1,
                **kw,
            }
            out.append(Spec(**values))
        return out

    a.specs += more(s1, 3, series_number=1, series_description="Axial")
    a.specs += more(s1, 2, series_number=2, series_description="Coronal")
    a.specs += more(s2, 2, series_number=1, series_description="Sagittal T1")
    a.specs += more(s3, 1, series_number=1, modality="CT", series_description="Lung")
    a.specs += more(
        s3,
        1,
        series_number=2,
        modality="MR",
        series_description="Heart",
        extra={"BodyPartExamined": "CHEST"},
    )
    a.specs += more(s4, 1, series_number=5)
    await _ingest(runtime, tmp_path, a.specs)
    return a


async def _get(client: TestClient, url: str, **params: str) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    response = await client.get(url, params=params)
    if response.status == 204:
        return []
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    body: list[dict[str, Any]] = await response.json()
    return body


def _values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return sorted(r[tag]["Value"][0] for r in results if r.get(tag, {}).get("Value"))


async def _accessions(client: TestClient, **params: str) -> list[str]:  # type: ignore[type-arg]
    return _values(await _get(client, "/dicomweb/studies", **params), t.ACCESSION_NUMBER)


async def test_exact_match(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    assert await _accessions(client, PatientID="P1") == ["A1", "A2"]
    assert await _accessions(client, AccessionNumber="A3") == ["A3"]
    assert await _accessions(client, PatientID="nobody") == []


async def test_person_name_wildcards_are_case_insensitive(
    client: TestClient, archive: Archive
) -> None:  # type: ignore[type-arg]
    assert await _accessions(client, PatientName="doe*") == ["A1", "A2"]
    assert await _accessions(client, PatientName="R?E^*") == ["A3"]
    assert await _accessions(client, PatientName="*ÜLLER*") == ["A4"]
    assert await _accessions(client, PatientName="Doe^Jane") == ["A1", "A2"]
    assert await _accessions(client, PatientName="Doe") == []


async def test_date_and_time_ranges(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    assert await _accessions(client, StudyDate="20200101-20211231") == ["A1", "A2"]
    assert await _accessions(client, StudyDate="-20200115") == ["A1", "A4"]
    assert await _accessions(client, StudyDate="20210620-") == ["A2", "A3"]
    assert await _accessions(client, StudyDate="20221231") == ["A3"]
    assert await _accessions(client, StudyTime="2300-") == ["A3"]
    assert await _accessions(client, StudyTime="0800-1015") == ["A1", "A2", "A4"]
    assert await _accessions(client, StudyTime="0800-1014") == ["A2"]
    response = await client.get("/dicomweb/studies", params={"StudyDate": "2020-13-45x"})
    assert response.status == 400


async def test_uid_lists(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    a1, a3 = archive.study("A1"), archive.study("A3")
    assert await _accessions(client, StudyInstanceUID=f"{a1},{a3}") == ["A1", "A3"]
    assert await _accessions(client, StudyInstanceUID=f"{a1}\\{a3}") == ["A1", "A3"]


async def test_modalities_in_study(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    assert await _accessions(client, ModalitiesInStudy="MR") == ["A2", "A3"]
    assert await _accessions(client, ModalitiesInStudy="CT") == ["A1", "A3", "A4"]
    results = await _get(client, "/dicomweb/studies", AccessionNumber="A3")
    assert results[0][t.MODALITIES_IN_STUDY]["Value"] == ["CT", "MR"]


async def test_study_level_return_attributes_and_counts(
    client: TestClient, archive: Archive
) -> None:  # type: ignore[type-arg]
    (study,) = await _get(client, "/dicomweb/studies", AccessionNumber="A1")
    for tag in (
        t.STUDY_INSTANCE_UID,
        t.PATIENT_NAME,
        t.PATIENT_ID,
        t.STUDY_DATE,
        t.RETRIEVE_URL,
        t.NUMBER_OF_STUDY_RELATED_SERIES,
        t.NUMBER_OF_STUDY_RELATED_INSTANCES,
        t.MODALITIES_IN_STUDY,
    ):
        assert tag in study, tag
    assert study[t.NUMBER_OF_STUDY_RELATED_SERIES]["Value"] == [2]
    assert study[t.NUMBER_OF_STUDY_RELATED_INSTANCES]["Value"] == [5]
    assert study[t.RETRIEVE_URL]["Value"][0].endswith(f"/dicomweb/studies/{archive.study('A1')}")
    assert t.STUDY_DESCRIPTION not in study
    (study,) = await _get(
        client, "/dicomweb/studies", AccessionNumber="A1", includefield="StudyDescription"
    )
    assert study[t.STUDY_DESCRIPTION]["Value"] == ["Head CT"]
    assert set(study) <= set(t.REQUIRED_RETURN[Level.STUDY]) | {
        t.STUDY_DESCRIPTION,
        t.SOP_CLASSES_IN_STUDY,
    }


async def test_any_attribute_matches_without_registration(
    client: TestClient, archive: Archive
) -> None:  # type: ignore[type-arg]
    # a study attribute carried by the study rollup
    assert await _accessions(client, StudyDescription="*CT") == ["A1"]
    # a series attribute, answered at study level through the instances
    assert await _accessions(client, SeriesDescription="Heart") == ["A3"]
    assert await _accessions(client, BodyPartExamined="CHEST") == ["A3"]
    # by tag number, at instance level
    results = await _get(client, "/dicomweb/instances", **{"00180015": "CHEST"})
    assert len(results) == 1


async def test_private_tags_match_by_tag(
    runtime: Runtime, client: TestClient, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    from tests.factory import make_dataset

    ds = make_dataset(Spec(accession="PRIV"))
    block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "cohort-42")
    path = tmp_path / "private.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert (await runtime.ingestor.ingest(path, Source("test"))).outcome is Outcome.STORED
    results = await _get(client, "/dicomweb/instances", **{"00111001": "cohort-42"})
    assert [r[t.SOP_INSTANCE_UID]["Value"][0] for r in results] == [ds.SOPInstanceUID]
    assert await _accessions(client, **{"00111001": "cohort-4*"}) == ["PRIV"]
    assert await _get(client, "/dicomweb/instances", **{"00111001": "other"}) == []


async def test_series_level(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    all_mr = await _get(client, "/dicomweb/series", Modality="MR")
    assert len(all_mr) == 2
    for series in all_mr:  # not scoped by a study: study attributes come along
        assert t.STUDY_INSTANCE_UID in series and t.PATIENT_ID in series
        assert series[t.NUMBER_OF_SERIES_RELATED_INSTANCES]["Value"][0] >= 1
    a1 = archive.study("A1")
    scoped = await _get(client, f"/dicomweb/studies/{a1}/series")
    assert _values(scoped, t.SERIES_NUMBER) == [1, 2]
    assert _values(scoped, t.NUMBER_OF_SERIES_RELATED_INSTANCES) == [2, 3]
    assert len(await _get(client, f"/dicomweb/studies/{a1}/series", SeriesNumber="2")) == 1
    assert len(await _get(client, "/dicomweb/series", PatientID="P1")) == 3
    assert len(await _get(client, "/dicomweb/series", PatientName="doe*", Modality="MR")) == 1
    assert await _get(client, "/dicomweb/studies/1.2.3.4/series") == []


async def test_instance_level(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    a1 = archive.study("A1")
    instances = await _get(client, f"/dicomweb/studies/{a1}/instances")
    assert len(instances) == 5
    first = instances[0]
    for tag in (
        t.SOP_CLASS_UID,
        t.SOP_INSTANCE_UID,
        t.INSTANCE_NUMBER,
        t.ROWS,
        t.COLUMNS,
        t.RETRIEVE_URL,
    ):
        assert tag in first, tag
    series_uid = first[t.SERIES_INSTANCE_UID]["Value"][0]
    in_series = await _get(
        client, f"/dicomweb/studies/{a1}/series/{series_uid}/instances", InstanceNumber="2"
    )
    assert len(in_series) == 1 and in_series[0][t.INSTANCE_NUMBER]["Value"] == [2]
    sop = first[t.SOP_INSTANCE_UID]["Value"][0]
    assert len(await _get(client, "/dicomweb/instances", SOPInstanceUID=sop)) == 1
    everything = await _get(client, "/dicomweb/instances", SOPInstanceUID=sop, includefield="all")
    pixel = everything[0]["7FE00010"]
    assert pixel["BulkDataURI"].startswith("http://") and pixel["BulkDataURI"].endswith(
        "/bulkdata/7FE00010"
    )
    assert len(await _get(client, "/dicomweb/instances", PatientID="P1", Modality="MR")) == 2


async def test_paging_is_complete_and_stable(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    seen: list[str] = []
    for offset in range(0, 10, 3):
        page = await _get(client, "/dicomweb/instances", limit="3", offset=str(offset))
        seen += [r[t.SOP_INSTANCE_UID]["Value"][0] for r in page]
    assert len(seen) == len(set(seen)) == len(archive.specs)
    assert len(await _get(client, "/dicomweb/studies", limit="2")) == 2
    assert len(await _get(client, "/dicomweb/studies", offset="3")) == 1


async def test_bad_requests(client: TestClient, archive: Archive) -> None:  # type: ignore[type-arg]
    for params in ({"NoSuchThing": "x"}, {"limit": "-3"}, {"InstanceNumber": "one"}):
        response = await client.get("/dicomweb/instances", params=params)
        assert response.status == 400, params
        assert "error" in await response.json()
    response = await client.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"})
    assert response.status == 406


async def test_non_ascii_round_trip_and_percent_encoding(
    runtime: Runtime, client: TestClient, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    samples = charset_samples(tmp_path)
    for path, _ in samples:
        assert (await runtime.ingestor.ingest(path, Source("test"))).outcome is Outcome.STORED
    for path, original in samples:
        expected = original["PatientName"].to_json_dict(None, 0)["Value"]
        alphabetic = expected[0].get("Alphabetic")
        if not alphabetic:
            continue
        url = "/dicomweb/studies?PatientName=" + quote(alphabetic, safe="")
        response = await client.get(url)
        assert response.status == 200, (path.name, alphabetic)
        body = await response.json()
        assert any(r[t.PATIENT_NAME]["Value"] == expected for r in body), path.name
