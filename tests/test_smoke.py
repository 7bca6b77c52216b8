from pathlib import Path

from cloudpacs.ingest import Outcome, Source
from tests.factory import write_instance


async def test_ingest_then_search(runtime, client, tmp_path: Path) -> None:
    spec = write_instance(tmp_path / "a.dcm")
    result = await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("test"))
    assert result.outcome is Outcome.STORED
    response = await client.get("/dicomweb/studies", params={"PatientID": spec.patient_id})
    assert response.status == 200
    body = await response.json()
    assert body[0]["0020000D"]["Value"] == [spec.study_uid]
