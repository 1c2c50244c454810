"""DICOMweb provider auth (bearer tokens by scope, `pacs token`) and CORS, on a real server.

The server runs with the loopback exemption off (PACS_OPEN_LOOPBACK=false), as if every client
were remote.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from storage.errors import BadInput, Conflict, NotFound
from storage.tokens import create_token, list_tokens, revoke_token
from tests.conftest import Server, start_server
from tests.dicomgen import make_image, make_study

ORIGIN = "http://viewer.example:3000"


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("auth"), PACS_OPEN_LOOPBACK="false",
                     PACS_CORS_ORIGINS=ORIGIN)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tokens(srv) -> dict[str, str]:
    """One token per scope, made in-process (the CLI is tested once below: it is slow to start)."""
    archive = srv.archive()
    try:
        return {scope: create_token(archive, f"t-{scope}", scope) for scope in ("read", "write", "admin")}
    finally:
        archive.close()


@pytest.fixture(scope="module")
def study(srv, tmp_path_factory) -> str:
    archive = srv.archive()
    try:
        paths = make_study(tmp_path_factory.mktemp("auth-in"), n_series=1, per_series=2, rows=8,
                           columns=8, patient_id="AUTH-P1")
        return [archive.store(p) for p in paths][0].study_uid
    finally:
        archive.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_is_401_with_challenge(srv, study):
    r = requests.get(f"{srv.dicomweb_url}/studies")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.get(f"{srv.dicomweb_url}/studies/{study}/metadata")
    assert r.status_code == 401


def test_wrong_or_malformed_token_is_401(srv, study, tokens):
    for header in ("Bearer pacs_nope", "Basic dXNlcjpwYXNz", "Bearer "):
        r = requests.get(f"{srv.dicomweb_url}/studies", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert "Bearer" in r.headers["WWW-Authenticate"]


def test_read_token_reads_but_cannot_write_or_delete(srv, study, tokens):
    h = _bearer(tokens["read"])
    r = requests.get(f"{srv.dicomweb_url}/studies", params={"PatientID": "AUTH-P1"}, headers=h)
    assert r.status_code == 200 and len(r.json()) == 1
    assert requests.get(f"{srv.dicomweb_url}/studies/{study}/metadata", headers=h).status_code == 200
    assert requests.delete(f"{srv.dicomweb_url}/studies/{study}", headers=h).status_code == 403
    r = requests.post(f"{srv.dicomweb_url}/studies", headers={**h, "Content-Type":
                      'multipart/related; type="application/dicom"; boundary=x'}, data=b"--x--\r\n")
    assert r.status_code == 403


def test_write_token_cannot_delete(srv, study, tokens):
    r = requests.delete(f"{srv.dicomweb_url}/studies/{study}", headers=_bearer(tokens["write"]))
    assert r.status_code == 403


def test_admin_token_deletes(srv, tokens, tmp_path):
    archive = srv.archive()
    try:
        img = make_image(patient_id="AUTH-P2", rows=8, columns=8)
        res = archive.store(_bytes(img))
    finally:
        archive.close()
    h = _bearer(tokens["admin"])
    url = (f"{srv.dicomweb_url}/studies/{res.study_uid}/series/{res.series_uid}/instances/"
           f"{res.sop_instance_uid}")
    assert requests.delete(url, headers=h).status_code == 204
    assert requests.delete(url, headers=h).status_code == 404
    assert requests.get(f"{srv.dicomweb_url}/studies", params={"PatientID": "AUTH-P2"},
                        headers=h).json() == []
    events = [e for e in srv.archive().audit.events(action="delete") if e.actor == "token:t-admin"]
    assert events and events[-1].study_uid == res.study_uid


def test_pacs_token_create_list_revoke(srv, tokens):
    name = "t-short-lived"
    token = srv.pacs("token", "create", "--name", name, "--scope", "read").stdout.split()[0]
    assert requests.get(f"{srv.dicomweb_url}/studies", headers=_bearer(token)).status_code == 200
    listed = srv.pacs("token", "list").stdout
    assert f"{name}\tread" in listed and "t-admin\tadmin" in listed and token not in listed
    srv.pacs("token", "revoke", name)
    assert requests.get(f"{srv.dicomweb_url}/studies", headers=_bearer(token)).status_code == 401


def test_token_store_refuses_duplicates_and_unknown_names(srv, tokens):
    archive = srv.archive()
    try:
        with pytest.raises(Conflict):
            create_token(archive, "t-read", "read")
        with pytest.raises(NotFound):
            revoke_token(archive, "no-such-token")
        with pytest.raises(BadInput):
            create_token(archive, "t-bad", "root")
        stored = {t.name: t.scope for t in list_tokens(archive)}
        assert stored["t-write"] == "write"
    finally:
        archive.close()


def test_cors_preflight_without_credentials(srv):
    r = requests.options(f"{srv.dicomweb_url}/studies", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, accept"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "GET" in r.headers["Access-Control-Allow-Methods"]
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    r = requests.options(f"{srv.dicomweb_url}/studies", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_headers_on_answers(srv, tokens):
    r = requests.get(f"{srv.dicomweb_url}/studies", headers={**_bearer(tokens["read"]), "Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Warning" in r.headers["Access-Control-Expose-Headers"]
    assert "Origin" in r.headers["Vary"]
    r = requests.get(f"{srv.dicomweb_url}/studies", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == ORIGIN


def _bytes(ds) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
