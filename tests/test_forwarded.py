"""Absolute URLs (RetrieveURL, BulkDataURI) follow each request, behind a trusted proxy or not.

The service root is remembered per scheme, host and prefix (dicomweb/context.py): requests through
different hosts and prefixes must each get their own, never the previous request's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from storage.tokens import create_token
from tests.conftest import Server, start_server
from tests.dicomgen import make_study


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("fwd"), PACS_TRUST_PROXY_HEADERS="true")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def uids(srv, tmp_path_factory) -> tuple[str, str, str]:
    """(study, series, a read token): behind a proxy every caller needs a token, loopback too."""
    archive = srv.archive()
    try:
        paths = make_study(tmp_path_factory.mktemp("fwd-in"), n_series=1, per_series=1, rows=8,
                           columns=8, patient_id="FWD-P1")
        stored = archive.store(paths[0])
        return stored.study_uid, stored.series_uid, create_token(archive, "fwd", "read")
    finally:
        archive.close()


PROXIES = [
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "a.example"}, "https://a.example/dicom-web"),
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "b.example", "X-Forwarded-Prefix": "/pacs"},
     "https://b.example/pacs/dicom-web"),
    ({"X-Forwarded-Host": "a.example:8443"}, "http://a.example:8443/dicom-web"),
]


def test_retrieve_and_bulk_data_urls_follow_each_request(srv, uids):
    study, series, token = uids
    direct = srv.dicomweb_url
    for _ in range(2):  # each host again after the others: nothing remembered across hosts
        for proxy, root in [*PROXIES, ({}, direct)]:
            headers = {**proxy, "Authorization": f"Bearer {token}"}
            r = requests.get(f"{direct}/studies", params={"StudyInstanceUID": study}, headers=headers)
            assert r.status_code == 200
            assert r.json()[0]["00081190"]["Value"][0] == f"{root}/studies/{study}"
            r = requests.get(f"{direct}/studies/{study}/series/{series}/metadata", headers=headers)
            assert r.json()[0]["7FE00010"]["BulkDataURI"].startswith(f"{root}/studies/{study}/series/")
