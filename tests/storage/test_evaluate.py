"""storage.evaluate decides in Python what the server would: the same filters (built by
storage.filters from QIDO matches), the same documents, the same answers as FerretDB's."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from cloudpacs.dicom.matching import parse_query
from cloudpacs.runtime import Runtime
from cloudpacs.storage import evaluate
from cloudpacs.storage.filters import STUDY_KEYS, match_filter

NAMES = ["SMITH^ANN", "SMYTH^BO", "JONES^CY", "S", "SM", "ÉLODIE^Z", "SMITH^ANN\n", "DOE"]
MODALITIES = ["CT", "MR", "PT", "US"]
PARAMS = [
    ("PatientID", ["P1", "P2", "P1\\P3", "P*", "?2", "p1"]),
    ("PatientName", ["SMITH^ANN", "sm*", "SM*", "S*", "*ANN", "SM?TH*", "S", "Smith^Ann", "É*"]),
    (
        "StudyDate",
        ["20240115", "20240101-20241231", "-20200101", "20230601-", "20220101\\20240115"],
    ),
    ("StudyTime", ["101500", "100000-120000", "-0900", "1300-"]),
    ("ModalitiesInStudy", ["CT", "MR\\PT", "C*", "US"]),
    ("AccessionNumber", ["A1", "A*", "A1\\A2"]),
    ("StudyID", ["1", "2*"]),
    ("ReferringPhysicianName", ["REF*", "ref^doctor"]),
]


def random_doc(rng: random.Random, n: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": f"1.2.{n}", "project": rng.choice(["alpha", "beta"])}
    optional = {
        "patient_id": lambda: rng.choice(["P1", "P2", "P3", "Q2"]),
        "patient_name": lambda: rng.sample(NAMES, rng.randint(1, 2)),
        "study_date": lambda: rng.choice(
            [datetime(rng.randint(2018, 2025), rng.randint(1, 12), rng.randint(1, 28)), None]
        ),
        "study_time": lambda: rng.choice(["101500.000000", "083000.000000", "130000.500000"]),
        "accession": lambda: rng.choice(["A1", "A2", "B1", ""]),
        "study_id": lambda: rng.choice(["1", "2", "20"]),
        "referring_physician": lambda: [rng.choice(["REF^DOCTOR", "OTHER"])],
        "modalities": lambda: sorted(rng.sample(MODALITIES, rng.randint(0, 2))),
    }
    for key, make in optional.items():
        if rng.random() < 0.85:
            doc[key] = make()
    return doc


def random_filter(rng: random.Random) -> dict[str, Any]:
    params = [(name, rng.choice(values)) for name, values in rng.sample(PARAMS, rng.randint(1, 3))]
    conditions = [match_filter(m, STUDY_KEYS) for m in parse_query(params).matches]
    if rng.random() < 0.3:
        conditions.append({"project": {"$in": ["alpha"]}})
    return {"$and": conditions}


async def test_the_evaluator_agrees_with_ferretdb(runtime: Runtime) -> None:
    rng = random.Random(20261201)
    collection = runtime.database.db["evaluated"]
    docs = [random_doc(rng, n) for n in range(150)]
    await collection.insert_many([dict(doc) for doc in docs])
    stored = await collection.find({}).to_list(None)  # as the server gives them back (tz-aware)
    assert any(d.get("study_date") and d["study_date"].tzinfo is not None for d in stored)
    for _ in range(300):
        query = random_filter(rng)
        by_server = sorted(d["_id"] for d in await collection.find(query, {"_id": 1}).to_list(None))
        by_us = sorted(d["_id"] for d in stored if evaluate.matches(d, query))
        assert by_us == by_server, query


def test_anything_it_does_not_know_is_refused() -> None:
    doc = {"_id": "1", "a": [1, 2]}
    for query in ({"$or": [{"a": 1}]}, {"a": {"$elemMatch": {"$gt": 1}}}, {"a": {"$ne": 1}}):
        with pytest.raises(evaluate.Unsupported):
            evaluate.matches(doc, query)
    with pytest.raises(evaluate.Unsupported):
        evaluate.matches({"_id": "1", "a": "x"}, {"a": {"$regex": "x", "$options": "s"}})


def test_mongodb_semantics_for_arrays_types_and_missing_fields() -> None:
    doc = {"_id": "1", "mods": ["CT", "MR"], "n": 5, "d": datetime(2024, 1, 2, tzinfo=UTC)}
    assert evaluate.matches(doc, {"mods": "MR"})
    assert evaluate.matches(doc, {"mods": ["CT", "MR"]})
    assert not evaluate.matches(doc, {"mods": "PT"})
    assert evaluate.matches(doc, {"n": 5.0}) and not evaluate.matches(doc, {"n": "5"})
    assert evaluate.matches(doc, {"d": {"$gte": datetime(2024, 1, 1)}})  # naive = UTC
    assert not evaluate.matches(doc, {"d": {"$gte": "2024"}})  # other type: no match
    assert evaluate.matches(doc, {"missing": None})
    assert not evaluate.matches(doc, {"missing": {"$gte": 0}})
    assert not evaluate.matches(doc, {"missing": {"$in": ["x"]}})
