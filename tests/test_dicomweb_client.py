"""dicomweb-client round trip, QIDO-RS and metadata part: what dcmtk sends is what DICOMweb shows.

(WADO-RS retrieval round trips are in the retrieval tests.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from tests.conftest import require
from tests.dicomgen import make_study


@pytest.fixture(scope="module")
def sent(server, tmp_path_factory) -> list[Path]:
    """Two series pushed by dcmtk storescu over DIMSE."""
    folder = tmp_path_factory.mktemp("client-in")
    paths = make_study(folder, n_series=2, per_series=2, rows=16, columns=16,
                       patient_id="CLIENT-P1", patient_name="Müller^Jörg", accession="CL-1")
    subprocess.run([require("storescu"), "-aec", server.ae_title, "+sd", "+r", "127.0.0.1",
                    str(server.dicom_port), str(folder)], check=True, capture_output=True, timeout=120)
    return paths


@pytest.fixture(scope="module")
def client(server) -> DICOMwebClient:
    return DICOMwebClient(server.dicomweb_url)


def _value(obj: dict, tag: str):
    return obj[tag]["Value"][0]


def test_search_every_level_finds_what_was_sent(client, sent, server):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sent]
    study_uid = str(headers[0].StudyInstanceUID)
    studies = client.search_for_studies(search_filters={"AccessionNumber": "CL-1"})
    assert [_value(s, "0020000D") for s in studies] == [study_uid]
    assert _value(studies[0], "00100010") == {"Alphabetic": "Müller^Jörg"}  # UTF-8 in DICOM JSON
    series = client.search_for_series(study_uid)
    assert {_value(s, "0020000E") for s in series} == {str(h.SeriesInstanceUID) for h in headers}
    instances = client.search_for_instances(study_uid)
    assert {_value(i, "00080018") for i in instances} == {str(h.SOPInstanceUID) for h in headers}
    for inst in instances:
        assert _value(inst, "00081190") == (f"{server.dicomweb_url}/studies/{study_uid}/series/"
                                            f"{_value(inst, '0020000E')}/instances/{_value(inst, '00080018')}")


def test_metadata_equals_the_sent_headers(client, sent):
    by_uid = {str(h.SOPInstanceUID): h for h in
              (pydicom.dcmread(p, stop_before_pixels=True) for p in sent)}
    first = next(iter(by_uid.values()))
    meta = client.retrieve_study_metadata(str(first.StudyInstanceUID))
    assert len(meta) == len(sent)
    for obj in meta:
        got = pydicom.Dataset.from_json(obj, bulk_data_uri_handler=lambda uri: b"")
        want = by_uid[str(got.SOPInstanceUID)]
        for kw in ("PatientName", "PatientID", "StudyDate", "SeriesNumber", "InstanceNumber",
                   "ImageType", "WindowCenter", "Rows", "BitsStored"):
            assert got[kw].value == want[kw].value, kw
        assert "BulkDataURI" in obj["7FE00010"]
