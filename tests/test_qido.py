"""QIDO-RS (PS3.18 10.6) against a real ``pacs serve``: dicomweb-client, raw HTTP, dcmtk storescu."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest
import requests
from dicomweb_client import DICOMwebClient

from tests.conftest import require
from tests.dicomgen import make_image, make_study, write

# QIDO on PostgreSQL: the one query engine is covered in process (test_archive, test_blindindex on
# PostgreSQL) and through a served PostgreSQL + S3 node by test_wado, test_stow and test_cluster.


@dataclass
class Data:
    studies: dict[str, str]  # label -> StudyInstanceUID
    series: dict[str, list[str]]  # label -> SeriesInstanceUIDs


@pytest.fixture(scope="module")
def data(server, tmp_path_factory) -> Data:
    """Four studies of three patients, stored through the archive (the fast path)."""
    folder = tmp_path_factory.mktemp("qido-in")
    specs = {
        "A": dict(patient_id="QIDO-P1", patient_name="Doe^Jane", study_date="20240115",
                  accession="ACC-A", study_description="Chest", modality="CT", n_series=2, per_series=3),
        "B": dict(patient_id="QIDO-P1", patient_name="Doe^Jane", study_date="20230601",
                  accession="ACC-B", study_description="Brain", modality="MR", n_series=1, per_series=2),
        "C": dict(patient_id="QIDO-P2", patient_name="Smith^John", study_date="20220301",
                  accession="ACC-C", study_description="Knee", modality="CT", n_series=1, per_series=1),
        "D": dict(patient_id="QIDO-P3", patient_name="Smythe^Jon", study_date="20210101",
                  accession="ACC-D", study_description="Knee left", modality="CT", n_series=1,
                  per_series=1),
    }
    archive = server.archive()
    studies, series = {}, {}
    try:
        for label, kw in specs.items():
            paths = make_study(folder / label, rows=8, columns=8, **kw)
            results = [archive.store(p) for p in paths]
            studies[label] = results[0].study_uid
            series[label] = list(dict.fromkeys(r.series_uid for r in results))
    finally:
        archive.close()
    return Data(studies, series)


@pytest.fixture(scope="module")
def client(server) -> DICOMwebClient:
    return DICOMwebClient(server.dicomweb_url)


def _uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


def test_exact_patient_id(client, data, server):
    found = client.search_for_studies(search_filters={"PatientID": "QIDO-P1"})
    assert _uids(found) == {data.studies["A"], data.studies["B"]}
    first = next(r for r in found if r["0020000D"]["Value"][0] == data.studies["A"])
    assert first["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert first["00201206"]["Value"] == [2] and first["00201208"]["Value"] == [6]
    assert first["00080061"]["Value"] == ["CT"]
    assert first["00081190"]["Value"][0] == f"{server.dicomweb_url}/studies/{data.studies['A']}"


def test_wildcard_and_case_insensitive_name(client, data):
    found = client.search_for_studies(search_filters={"PatientName": "sm*"})
    assert _uids(found) == {data.studies["C"], data.studies["D"]}
    found = client.search_for_studies(search_filters={"StudyDescription": "Kn?e*"})
    assert _uids(found) == {data.studies["C"], data.studies["D"]}


def test_date_range(client, data):
    found = client.search_for_studies(search_filters={"StudyDate": "20220101-20231231"})
    assert _uids(found) == {data.studies["B"], data.studies["C"]}
    found = client.search_for_studies(search_filters={"StudyDate": "-20211231"})
    assert _uids(found) == {data.studies["D"]}


def test_uid_list_repeated_and_comma(client, data, server):
    wanted = [data.studies["A"], data.studies["C"]]
    assert _uids(client.search_for_studies(search_filters={"StudyInstanceUID": wanted})) == set(wanted)
    r = requests.get(f"{server.dicomweb_url}/studies", params={"StudyInstanceUID": ",".join(wanted)})
    assert r.status_code == 200 and _uids(r.json()) == set(wanted)


def test_fuzzymatching(client, data):
    strict = client.search_for_studies(search_filters={"PatientName": "jon"}, fuzzymatching=False)
    assert strict == []
    fuzzy = client.search_for_studies(search_filters={"PatientName": "jon"}, fuzzymatching=True)
    assert _uids(fuzzy) == {data.studies["D"]}


def test_includefield_keyword_and_tag(client, data):
    found = client.search_for_studies(search_filters={"StudyInstanceUID": data.studies["A"]},
                                      fields=["StudyDescription", "00100030"])
    assert found[0]["00081030"]["Value"] == ["Chest"]
    assert found[0]["00100030"]["Value"] == ["19700101"]


def test_paging_until_empty(client, data):
    # this module's four studies only: other tests add studies to the shared server
    ours = {"StudyInstanceUID": [data.studies[k] for k in "DCBA"]}
    seen: list[str] = []
    for page in range(10):
        found = client.search_for_studies(search_filters=ours, limit=1, offset=page)
        if not found:
            break
        assert len(found) == 1
        seen += _uids(found)
    assert len(seen) == len(set(seen)) == 4
    # newest first, as OHIF's study list shows
    assert seen == [data.studies[k] for k in "ABCD"]
    assert len(client.search_for_studies(search_filters=ours, get_remaining=True, limit=3)) == 4


def test_series_and_instances(client, data):
    series = client.search_for_series(data.studies["A"])
    assert [s["0020000E"]["Value"][0] for s in series] == data.series["A"]
    assert series[0]["00080060"]["Value"] == ["CT"] and series[0]["00201209"]["Value"] == [3]
    assert series[0]["00081190"]["Value"][0].endswith(f"/series/{data.series['A'][0]}")
    mr = client.search_for_series(search_filters={"Modality": "MR", "PatientID": "QIDO-P1"})
    assert [s["0020000D"]["Value"][0] for s in mr] == [data.studies["B"]]
    insts = client.search_for_instances(data.studies["A"], data.series["A"][1])
    assert [i["00200013"]["Value"][0] for i in insts] == [1, 2, 3]
    assert insts[0]["00280010"]["Value"] == [8]
    assert len(client.search_for_instances(data.studies["A"])) == 6
    every = client.search_for_instances(search_filters={"PatientID": "QIDO-P2"})
    assert len(every) == 1 and every[0]["00100020"]["Value"] == ["QIDO-P2"]  # study attrs included


def test_nothing_matches_is_200_empty(server, data):
    r = requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": "NOBODY"})
    assert r.status_code == 200 and r.json() == []
    assert r.headers["Content-Type"] == "application/dicom+json"


@pytest.mark.parametrize("query", [
    "includefield=00081030&includefield=00080060",
    "includefield=00081030,StudyDescription",
    "includefield=StudyDescription%2C00100030",
])
def test_raw_includefield_variants(server, data, query):
    r = requests.get(f"{server.dicomweb_url}/studies?StudyInstanceUID={data.studies['A']}&{query}",
                     headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/dicom+json"
    assert r.json()[0]["00081030"]["Value"] == ["Chest"]


def test_includefield_all(server, data):
    r = requests.get(f"{server.dicomweb_url}/studies/{data.studies['A']}/series",
                     params={"includefield": "all"})
    assert r.status_code == 200
    assert r.json()[0]["0008103E"]["Value"] == ["Axial"]  # SeriesDescription


def test_ohif_study_list_query(server, data):
    r = requests.get(f"{server.dicomweb_url}/studies?limit=101&offset=0&fuzzymatching=false"
                     "&includefield=00081030%2C00080060&PatientName=*doe*")
    assert r.status_code == 200
    assert _uids(r.json()) == {data.studies["A"], data.studies["B"]}


def test_bad_queries_are_400_with_reason(server, data):
    for query, reason in [("NotAnAttribute=1", "NotAnAttribute"), ("StudyDate=2024", "StudyDate"),
                          ("limit=-1", "limit"), ("fuzzymatching=maybe", "fuzzymatching"),
                          ("includefield=Nope", "Nope"), ("StudyInstanceUID=abc", "UID")]:
        r = requests.get(f"{server.dicomweb_url}/studies?{query}")
        assert r.status_code == 400, query
        assert reason in r.text and "Traceback" not in r.text


def test_huge_or_odd_paging_values(server, data):
    """Before: a 21-digit limit overflowed SQLite's integers and "²" passed the digit check, both 500."""
    everything = requests.get(f"{server.dicomweb_url}/studies")
    huge = requests.get(f"{server.dicomweb_url}/studies?limit={10**20}")
    assert huge.status_code == 200 and _uids(huge.json()) == _uids(everything.json())
    past = requests.get(f"{server.dicomweb_url}/studies?offset={10**20}")
    assert past.status_code == 200 and past.json() == []
    for odd in ("limit=%C2%B2", "offset=%D9%A3"):  # superscript two; Arabic-Indic three
        r = requests.get(f"{server.dicomweb_url}/studies?{odd}")
        assert r.status_code == 400 and "non-negative integer" in r.text, odd


@pytest.mark.parametrize("query", ["SeriesNumber=99999999999999999999", "SeriesNumber=%C2%B2",
                                   "InstanceNumber=-99999999999999999999"])
def test_integer_keys_past_64_bits_or_not_ascii_match_nothing(server, data, query):
    """Before: SQLite's integer overflow, or int("²"), made these a 500."""
    r = requests.get(f"{server.dicomweb_url}/instances?{query}")
    assert r.status_code == 200 and r.json() == []


def test_unsupported_key_is_ignored_with_warning(server, data):
    r = requests.get(f"{server.dicomweb_url}/studies",
                     params={"PatientID": "QIDO-P2", "PatientMotherBirthName": "X"})
    assert r.status_code == 200 and _uids(r.json()) == {data.studies["C"]}
    assert r.headers["Warning"].startswith("299 ") and "PatientMotherBirthName" in r.headers["Warning"]


def test_not_acceptable(server, data):
    r = requests.get(f"{server.dicomweb_url}/studies", headers={"Accept": "image/png"})
    assert r.status_code == 406


def test_storescu_objects_are_found(server, data, tmp_path):
    storescu = require("storescu")
    study = make_image(patient_id="QIDO-DCMTK", patient_name="Tool^Dcmtk", rows=8, columns=8,
                       study_description="via storescu")
    path = write(study, tmp_path)
    subprocess.run([storescu, "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port), str(path)],
                   check=True, capture_output=True, timeout=60)
    r = requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": "QIDO-DCMTK",
                                                               "includefield": "StudyDescription"})
    assert r.status_code == 200
    assert r.json()[0]["0020000D"]["Value"] == [str(study.StudyInstanceUID)]
    assert r.json()[0]["00081030"]["Value"] == ["via storescu"]


def test_unknown_parent_is_404_known_parent_without_match_is_200(server, data):
    """Issue 4: a study or series named in the path that does not exist is a 404, not ``[]``."""
    from pydicom.uid import generate_uid

    root, unknown = server.dicomweb_url, generate_uid()
    a, a_series, c = data.studies["A"], data.series["A"][0], data.studies["C"]
    for path in (f"/studies/{unknown}/series", f"/studies/{unknown}/instances",
                 f"/studies/{a}/series/{unknown}/instances",
                 f"/studies/{c}/series/{a_series}/instances"):  # a real series, in another study
        r = requests.get(root + path, timeout=30)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert "Traceback" not in r.text
    r = requests.get(f"{root}/studies/{a}/series", params={"Modality": "XA"}, timeout=30)
    assert r.status_code == 200 and r.json() == []  # the study exists: an empty search result
    r = requests.get(f"{root}/studies/{a}/series/{a_series}/instances", params={"InstanceNumber": "99"},
                     timeout=30)
    assert r.status_code == 200 and r.json() == []
    r = requests.get(f"{root}/studies", params={"StudyInstanceUID": unknown}, timeout=30)
    assert r.status_code == 200 and r.json() == []


def test_query_engine_returns_only_what_was_asked(archive, tmp_path):
    """Core select of the needed columns: clear, hashed and sealed keys at every level, on both DBs."""
    from storage.query import Query

    paths = make_study(tmp_path, patient_id="QE-1", patient_name="Eng^Ine", study_date="20200202",
                       accession="QE-ACC", study_description="Engine", modality="MR", n_series=2,
                       per_series=2, rows=8, columns=8)
    for p in paths:
        archive.store(p)
    [study] = archive.find(Query(level="STUDY", filters={"PatientID": "QE-1"},
                                 return_keys=["StudyDate", "PatientName", "StudyDescription",
                                              "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]))
    assert study["StudyDate"] == "20200202" and study["PatientName"] == "Eng^Ine"
    assert study["StudyDescription"] == "Engine" and study["ModalitiesInStudy"] == "MR"
    assert study["NumberOfStudyRelatedInstances"] == 4 and study["PatientID"] == "QE-1"
    assert isinstance(study["_patient_ref"], int)
    images = list(archive.find(Query(level="IMAGE", filters={"AccessionNumber": "QE-ACC",
                                                              "SeriesDescription": "*"},
                                     return_keys=["InstanceNumber", "Rows", "PatientName"],
                                     limit=3, offset=1)))
    assert len(images) == 3 and images[0]["Rows"] == 8 and images[0]["PatientName"] == "Eng^Ine"
    only_clear = next(iter(archive.find(Query(level="SERIES", filters={"Modality": "MR"},
                                              return_keys=["SeriesNumber"]))))
    assert set(only_clear) == {"StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
                               "_patient_ref"}
