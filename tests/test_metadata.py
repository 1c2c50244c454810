"""WADO-RS metadata (PS3.18 10.4.1.1.2) against a real ``pacs serve``, and the series cache."""

from __future__ import annotations

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from storage.archive import Scope
from storage.errors import NotFound
from storage.metadata import series_metadata
from tests.dicomgen import make_image, make_study, write


@pytest.fixture(scope="module")
def study(server, tmp_path_factory) -> dict:
    """A study of two series (3 + 2 instances), one instance with a sequence holding bulk data."""
    folder = tmp_path_factory.mktemp("meta-in")
    paths = make_study(folder, n_series=2, per_series=3, rows=8, columns=8, patient_id="META-P1")
    extra = make_image(patient_id="META-P1", rows=8, columns=8, instance_number=9,
                       study_uid=pydicom.dcmread(paths[0]).StudyInstanceUID,
                       series_uid=pydicom.dcmread(paths[-1]).SeriesInstanceUID)
    item = Dataset()
    item.RedPaletteColorLookupTableData = b"\x01\x02" * 1024  # OW, 2 KiB: bulk data in a sequence
    extra.IconImageSequence = [item]
    extra.add_new(0x00090010, "LO", "PACS TEST")
    extra.add_new(0x00091010, "OB", b"\x00" * 4000)  # private bulk data
    paths.append(write(extra, folder))
    archive = server.archive()
    try:
        results = [archive.store(p) for p in paths]
    finally:
        archive.close()
    series = list(dict.fromkeys(r.series_uid for r in results))
    return {"study": results[0].study_uid, "series": series, "extra": results[-1].sop_instance_uid}


@pytest.fixture(scope="module")
def client(server) -> DICOMwebClient:
    return DICOMwebClient(server.dicomweb_url)


def test_series_metadata(client, study, server):
    meta = client.retrieve_series_metadata(study["study"], study["series"][0])
    assert len(meta) == 3
    assert [m["00200013"]["Value"][0] for m in meta] == [1, 2, 3]
    ds = pydicom.Dataset.from_json(meta[0], bulk_data_uri_handler=lambda uri: b"")  # parses as DICOM JSON
    assert ds.PatientID == "META-P1" and ds.Rows == 8
    pixel = meta[0]["7FE00010"]
    sop = meta[0]["00080018"]["Value"][0]
    assert pixel == {"vr": "OW", "BulkDataURI": f"{server.dicomweb_url}/studies/{study['study']}/series/"
                     f"{study['series'][0]}/instances/{sop}/bulkdata/7fe00010"}


def test_nested_and_private_bulk_data_uris(client, study, server):
    meta = [client.retrieve_instance_metadata(study["study"], study["series"][1], study["extra"])]
    base = (f"{server.dicomweb_url}/studies/{study['study']}/series/{study['series'][1]}/instances/"
            f"{study['extra']}/bulkdata/")
    icon = meta[0]["00880200"]["Value"][0]
    assert icon["00281201"]["BulkDataURI"] == base + "00880200/0/00281201"
    assert meta[0]["00091010"]["BulkDataURI"] == base + "00091010"
    assert meta[0]["00100020"]["Value"] == ["META-P1"]


def test_study_metadata(client, study):
    meta = client.retrieve_study_metadata(study["study"])
    assert len(meta) == 7
    assert {m["0020000E"]["Value"][0] for m in meta} == set(study["series"])


def test_series_metadata_cache_invalidation(client, server, tmp_path):
    """A series of its own (the module's study stays as the other tests expect it)."""
    paths = make_study(tmp_path / "in", n_series=1, per_series=3, rows=8, columns=8,
                       patient_id="META-P3")
    archive = server.archive()
    try:
        [first, *_] = [archive.store(p) for p in paths]
        # the cache is filled; a new instance in the series clears it and shows up
        assert [m["00200013"]["Value"][0] for m in client.retrieve_series_metadata(
            first.study_uid, first.series_uid)] == [1, 2, 3]
        assert series_metadata(archive, first.study_uid, first.series_uid).count("00080018") == 3
        new = make_image(patient_id="META-P3", rows=8, columns=8, instance_number=4,
                         study_uid=first.study_uid, series_uid=first.series_uid)
        archive.store(write(new, tmp_path))
    finally:
        archive.close()
    meta = client.retrieve_series_metadata(first.study_uid, first.series_uid)
    assert [m["00200013"]["Value"][0] for m in meta] == [1, 2, 3, 4]


def test_bulk_data_uris_follow_the_request_host(study, server):
    # a client reaching the server as "localhost" gets URIs it can use (no fixed host)
    url = server.dicomweb_url.replace("127.0.0.1", "localhost")
    r = requests.get(f"{url}/studies/{study['study']}/series/{study['series'][0]}/metadata")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/dicom+json"
    assert r.json()[0]["7FE00010"]["BulkDataURI"].startswith(url + "/studies/")


def test_unknown_uids_are_404(study, server):
    for path in ("/studies/1.2.3.4/metadata", f"/studies/{study['study']}/series/1.2.3/metadata",
                 f"/studies/{study['study']}/series/{study['series'][0]}/instances/1.2/metadata"):
        r = requests.get(server.dicomweb_url + path)
        assert r.status_code == 404, path
        assert "Traceback" not in r.text


def test_series_of_another_study_is_404(study, server, tmp_path):
    other = make_image(patient_id="META-P2", rows=8, columns=8)
    archive = server.archive()
    try:
        res = archive.store(write(other, tmp_path))
    finally:
        archive.close()
    r = requests.get(f"{server.dicomweb_url}/studies/{res.study_uid}/series/{study['series'][0]}/metadata")
    assert r.status_code == 404


def test_series_cache_is_sealed_and_invalidated(archive, tmp_path):
    """storage.metadata on SQLite and PostgreSQL: cached sealed, cleared by a change, recomputed."""
    from sqlalchemy import select

    from storage.index.models import Series

    first = make_image(patient_id="CACHE-SECRET-ID", rows=8, columns=8, instance_number=1)
    res = archive.store(write(first, tmp_path))
    text = series_metadata(archive, res.study_uid, res.series_uid)
    assert "CACHE-SECRET-ID" in text and text.count('"00080018"') == 1
    with archive.sessions() as s:
        sealed = s.scalar(select(Series.metadata_cache).where(Series.series_uid == res.series_uid))
    assert sealed and b"CACHE-SECRET-ID" not in sealed
    assert series_metadata(archive, res.study_uid, res.series_uid) == text  # from the cache
    second = make_image(patient_id="CACHE-SECRET-ID", rows=8, columns=8, instance_number=2,
                        study_uid=res.study_uid, series_uid=res.series_uid)
    archive.store(write(second, tmp_path))
    with archive.sessions() as s:
        assert s.scalar(select(Series.metadata_cache).where(Series.series_uid == res.series_uid)) is None
    assert series_metadata(archive, res.study_uid, res.series_uid).count('"00080018"') == 2
    other = archive.store(write(make_image(patient_id="CACHE-OTHER", rows=8, columns=8), tmp_path))
    with pytest.raises(NotFound):  # out of scope: another patient's series
        series_metadata(archive, res.study_uid, res.series_uid, Scope(other.patient_ref))


def test_bulk_data_uris_resolve(client, study):
    """The contract with WADO-RS bulk data: the URIs in metadata fetch the element's bytes."""
    meta = client.retrieve_instance_metadata(study["study"], study["series"][1], study["extra"])
    nested = meta["00880200"]["Value"][0]["00281201"]["BulkDataURI"]
    assert client.retrieve_bulkdata(nested) == [b"\x01\x02" * 1024]
    assert client.retrieve_bulkdata(meta["00091010"]["BulkDataURI"]) == [b"\x00" * 4000]


def test_warmer_builds_settled_series_only(archive, tmp_path):
    """storage.metadata.MetadataWarmer on SQLite and PostgreSQL: builds caches of settled series."""
    from sqlalchemy import select

    from storage.index.models import Series
    from storage.metadata import MetadataWarmer

    res = archive.store(write(make_image(patient_id="WARM-1", rows=8, columns=8), tmp_path))
    warmer = MetadataWarmer(archive, settle=3600)
    assert warmer.run_once(archive) == 0  # stored just now: not settled yet
    warmer.settle = 0
    assert [p[2] for p in warmer.pending(archive)] == [res.series_uid]
    assert warmer.run_once(archive) == 1
    with archive.sessions() as s:
        sealed = s.scalar(select(Series.metadata_cache).where(Series.series_uid == res.series_uid))
    assert sealed and b"WARM-1" not in sealed
    assert warmer.pending(archive) == []
    assert "WARM-1" in series_metadata(archive, res.study_uid, res.series_uid)


def test_server_warms_series_metadata_after_stores(server, tmp_path):
    """The web worker's warmer builds a new series' cache a few seconds after its last store."""
    import time

    from sqlalchemy import select

    from storage.index.models import Series

    archive = server.archive()
    try:
        res = archive.store(write(make_image(patient_id="WARM-2", rows=8, columns=8), tmp_path))
        requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": "WARM-2"}, timeout=30)
        cached = None
        for _ in range(60):  # settle 2 s + a pass every 2 s
            with archive.sessions() as s:
                cached = s.scalar(select(Series.metadata_cache)
                                  .where(Series.series_uid == res.series_uid))
            if cached:
                break
            time.sleep(0.25)
        assert cached, "the series metadata cache was not built in the background"
    finally:
        archive.close()
