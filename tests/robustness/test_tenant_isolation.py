"""Tenant isolation matrix (issue 19 parts 1 and 6): provider A's token and calling AE title against
provider B's patients, over every DICOMweb route (generated from the Flask route table) and every
DIMSE service the SCP offers (generated from its event handlers and presentation contexts), on a
real ``pacs serve`` with real clients (requests; pynetdicom's AE as SCU and as the modality that
receives C-MOVEs and storage-commitment reports).

For each route or service a UID of provider B must answer exactly as an unknown UID (same status,
same body once the UIDs are swapped back), no answer to A may carry B's patient strings, and B's
data must be untouched afterwards. A positive control (B's own token and AE get B's data) keeps
the matrix from passing because the UIDs were wrong. A route or service with no case fails.
"""

from __future__ import annotations

import io
import json
import queue
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomweb.upload import CSRF_HEADER
from tests.conftest import PACS, free_port, start_server
from tests.dicomgen import make_image

# -- the route table's cases ---------------------------------------------------------------------

#: Provider services: reached with a bearer token, checked against provider B's UIDs.
PROVIDER_SERVICES = {"qido", "metadata", "wado", "wadouri", "wadouri_outside_root", "stow", "delete",
                     "upload"}
#: Routes a provider token does not reach patient data through, each with the reason.
NOT_PROVIDER = {
    "static": "static files", "openapi": "the API description", "healthz": "health, no data",
    "readyz": "readiness, no data", "metrics_view": "counters, no patient", "viewer": "the OHIF app",
    "patient_session_": "a patient's session cookie only (tests/robustness/test_isolation_matrix.py)",
    "patient_viewer": "the patient's viewer app", "patient_pages": "letter sign-in pages",
    "patient_": "a patient letter's HTTP Basic door (test_isolation_matrix.py)",
    "share_": "a patient's share: its own code or token, never a provider's (test_isolation_matrix.py)",
}


def _case_of(endpoint: str) -> str | None:
    service = endpoint.split(".", 1)[0]
    if service in PROVIDER_SERVICES:
        return "provider"
    for prefix in NOT_PROVIDER:
        if service == prefix or (prefix.endswith("_") and service.startswith(prefix)):
            return "not-provider"
    return None


def _p10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart(body: bytes) -> tuple[bytes, str]:
    boundary = "tenant-" + generate_uid()[-12:]
    data = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body
            + f"\r\n--{boundary}--\r\n".encode())
    return data, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PACS, *args], env=env, capture_output=True, text=True, timeout=120)


# -- the site: two providers, a removed one, a modality ------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("tenants")
    tag = generate_uid()[-8:].replace(".", "")
    names = {k: f"prov-{k}-{tag}" for k in ("A", "B", "C")}
    env = {"PATH": __import__("os").environ["PATH"], "PACS_DATA_DIR": str(base / "data")}
    for name in names.values():
        r = _cli(env, "provider", "add", name)
        assert r.returncode == 0, r.stderr
    tokens: dict[str, str] = {}
    for who, scope in (("A", "read"), ("A", "write"), ("A", "admin"), ("B", "admin"), ("C", "read")):
        r = _cli(env, "token", "create", "--name", f"{who}-{scope}-{tag}", "--scope", scope,
                 "--provider", names[who])
        assert r.returncode == 0, r.stderr
        tokens[f"{who}-{scope}"] = r.stdout.strip()
    r = _cli(env, "token", "create", "--name", f"ops-{tag}", "--scope", "read", "--cross-tenant")
    assert r.returncode == 0, r.stderr
    tokens["cross"] = r.stdout.strip()
    r = _cli(env, "provider", "remove", names["C"])
    assert r.returncode == 0, r.stderr

    received: queue.Queue = queue.Queue()  # what the modality AE_A got: C-MOVE stores, reports

    def on_store(event):
        received.put(("store", str(event.dataset.SOPInstanceUID)))
        return 0x0000

    def on_report(event):
        received.put(("report", event.event_information))
        return 0x0000, None

    port = free_port()
    modality = AE(ae_title="AE_A")
    modality.add_supported_context(CTImageStorage)
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener = modality.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_N_EVENT_REPORT, on_report)])
    srv = start_server(base, PACS_OPEN_LOOPBACK="false",
                       PACS_PROVIDER_AETS=f"AE_A={names['A']},AE_B={names['B']},AE_C={names['C']}",
                       PACS_DESTINATIONS=f"AE_A=127.0.0.1:{port},AE_B=127.0.0.1:{port}")
    pid = f"12345-{tag}"  # the same Patient ID at both providers: two patients
    people = {"A": (pid, f"Alpha^Only{tag}"), "B": (pid, f"Bravo^Secret{tag}")}
    b = make_image(patient_id=pid, patient_name=people["B"][1], rows=8, columns=8,
                   accession=f"ACCB{tag}")
    _c_store("AE_B", srv, b)  # B's patient arrives by DIMSE
    a = make_image(patient_id=pid, patient_name=people["A"][1], rows=8, columns=8)
    data, ctype = _multipart(_p10(a))  # A's by STOW-RS
    r = requests.post(f"{srv.http_url}/dicom-web/studies", data=data, timeout=60,
                      headers={"Content-Type": ctype, "Authorization": f"Bearer {tokens['A-write']}"})
    assert r.status_code == 200, r.text
    uids = {k: (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            for k, ds in (("A", a), ("B", b))}
    try:
        yield {"srv": srv, "tokens": tokens, "names": names, "uids": uids, "people": people,
               "received": received, "tag": tag, "env": env}
    finally:
        listener.shutdown()
        srv.stop()


def _c_store(calling: str, srv, ds: Dataset) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(str(ds.SOPClassUID))
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", CSRF_HEADER: "1"}


def _b_intact(site) -> None:
    """B's study is whole and B's alone, as B's own token sees it."""
    study, series, sop = site["uids"]["B"]
    r = requests.get(f"{site['srv'].http_url}/dicom-web/studies/{study}/instances", timeout=60,
                     headers=_bearer(site["tokens"]["B-admin"]))
    assert r.status_code == 200, r.status_code
    assert [i["00080018"]["Value"][0] for i in r.json()] == [sop]


# -- ingest ----------------------------------------------------------------------------------------

def test_same_patient_id_at_two_providers_is_two_patients(site) -> None:
    """Two providers' "12345" are two patients with two keys; each is issued by its provider."""
    srv, pid = site["srv"], site["people"]["A"][0]
    r = requests.get(f"{srv.http_url}/dicom-web/studies", params={"PatientID": pid,
                     "includefield": "00100021"}, headers=_bearer(site["tokens"]["cross"]), timeout=60)
    assert r.status_code == 200
    issuers = {s["00100021"]["Value"][0] for s in r.json()}  # (other tests add studies of A's)
    assert issuers == {site["names"]["A"], site["names"]["B"]}
    archive = srv.archive()
    try:
        from sqlalchemy import select

        from storage.index.models import Patient
        from storage.providers import get_provider
        from storage.tenancy import ProviderRef

        refs = {}
        for who in ("A", "B"):
            p = get_provider(archive, site["names"][who])
            refs[who] = archive.find_patient(pid, provider=ProviderRef(p.id, p.name))
        assert refs["A"] != refs["B"]
        with archive.sessions() as s:
            rows = {r.id: r for r in s.scalars(select(Patient).where(Patient.id.in_(refs.values())))}
        assert rows[refs["A"]].key_id != rows[refs["B"]].key_id
        assert rows[refs["A"]].provider_id != rows[refs["B"]].provider_id
    finally:
        archive.close()


# -- DICOMweb --------------------------------------------------------------------------------------

def _path(rule: str, values: dict[str, str]) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: values[m.group(1)], rule)


def _request(site, method: str, rule, uids: tuple[str, str, str], token: str) -> requests.Response:
    """One request of route ``rule`` about the instance ``uids`` with ``token``."""
    srv = site["srv"]
    study, series, sop = uids
    values = {"study": study, "series": series, "sop": sop, "instance": sop, "frames": "1",
              "tagpath": "7fe00010", "filename": "none.css", "rel": "index.html"}
    url = srv.http_url + _path(rule.rule, values)
    headers = _bearer(token)
    params: dict[str, str] = {}
    data: bytes | None = None
    files = None
    endpoint = rule.endpoint
    if endpoint.startswith("wadouri"):
        params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
                  "contentType": "application/dicom"}
    elif endpoint in ("qido.studies", "qido.series", "qido.instances"):
        params = {"StudyInstanceUID": study}
    elif endpoint in ("stow.stow", "stow.stow_study"):  # A's own patient, into the study named
        ds = make_image(patient_id=site["people"]["A"][0], patient_name=site["people"]["A"][1],
                        study_uid=study, rows=8, columns=8)
        data, headers["Content-Type"] = _multipart(_p10(ds))
    elif endpoint == "upload.files":
        files = {"file": ("note.txt", b"a note about the study", "text/plain")}
        data = {"patient_id": site["people"]["A"][0], "study_uid": study}  # type: ignore[assignment]
    return requests.request(method, url, headers=headers, params=params, data=data, files=files,
                            timeout=60, allow_redirects=False)


def _normal(body: bytes, uids: tuple[str, str, str]) -> bytes:
    """The body with the request's UIDs replaced by placeholders (an echo is not a leak)."""
    for i, uid in enumerate(uids):
        body = body.replace(uid.encode(), f"<uid{i}>".encode())
    return re.sub(rb"boundary=[^;\r\n\"]+|--[0-9a-f-]{16,}", b"<boundary>", body)


def test_every_route_answers_a_foreign_uid_as_an_unknown_one(site, figures) -> None:  # noqa: ANN001
    from dicomweb import create_app
    from storage.config import load_settings

    srv = site["srv"]
    app = create_app(load_settings(env=srv.env))
    rules, seen = [], set()
    for r in app.url_map.iter_rules():
        for m in sorted(r.methods - {"HEAD", "OPTIONS"}):
            if (r.rule, m) not in seen:  # a shadowed rule of the same path and method: never reached
                seen.add((r.rule, m))
                rules.append((r, m))
    app.extensions["archive"].close()

    no_case = [f"{m} {r.rule} ({r.endpoint})" for r, m in rules if _case_of(r.endpoint) is None]
    assert not no_case, "routes without a tenancy case: " + ", ".join(no_case)

    b_uids = site["uids"]["B"]
    secrets_b = [*site["people"]["B"][1:], f"ACCB{site['tag']}"]
    wrong: list[str] = []
    checked = controls = 0
    for rule, method in rules:
        if _case_of(rule.endpoint) != "provider":
            continue
        token = site["tokens"]["A-admin"]  # the widest scope: no 403 hides what a UID would say
        unknown = (generate_uid(), generate_uid(), generate_uid())
        foreign = _request(site, method, rule, b_uids, token)
        stranger = _request(site, method, rule, unknown, token)
        checked += 1
        label = f"{method} {rule.rule}"
        if foreign.status_code >= 500:
            wrong.append(f"{label}: {foreign.status_code}")
        if any(s.encode() in foreign.content for s in secrets_b):
            wrong.append(f"{label}: the answer carries B's patient strings")
        if rule.endpoint.startswith("stow"):
            # a new study of A's is stored; B's study UID is refused (409), naming nobody
            if foreign.status_code != 409:
                wrong.append(f"{label}: STOW into B's study answered {foreign.status_code}, not 409")
        elif foreign.status_code != stranger.status_code or \
                _normal(foreign.content, b_uids) != _normal(stranger.content, unknown):
            wrong.append(f"{label}: B's UID {foreign.status_code} {foreign.content[:120]!r} vs "
                         f"unknown {stranger.status_code} {stranger.content[:120]!r}")
        if "<study>" in rule.rule and method == "GET" and foreign.status_code != 404:
            wrong.append(f"{label}: B's study answered {foreign.status_code}, not 404")
        if method == "GET" and "<study>" in rule.rule:  # control: B's own token reaches it
            own = _request(site, method, rule, b_uids, site["tokens"]["B-admin"])
            controls += 1
            if own.status_code >= 400:
                wrong.append(f"{label}: B's own token got {own.status_code} (bad fixture UIDs?)")
    _b_intact(site)
    assert not wrong, "\n".join(wrong[:60])
    figures(provider_route_methods=checked, positive_controls=controls, routes_total=len(rules))


def test_qido_lists_only_the_providers_own_patients(site) -> None:
    srv, pid = site["srv"], site["people"]["A"][0]
    for level in ("studies", "series", "instances"):
        r = requests.get(f"{srv.http_url}/dicom-web/{level}", params={"PatientID": pid},
                         headers=_bearer(site["tokens"]["A-read"]), timeout=60)
        assert r.status_code == 200, (level, r.status_code)
        got = r.json()
        studies = {i["0020000D"]["Value"][0] for i in got}  # (other tests add studies of A's)
        assert site["uids"]["A"][0] in studies and site["uids"]["B"][0] not in studies, level
        assert site["people"]["B"][1].encode() not in r.content


def test_removed_provider_token_is_refused_as_unknown_and_audited(site) -> None:
    srv = site["srv"]
    url = f"{srv.http_url}/dicom-web/studies"
    removed = requests.get(url, headers=_bearer(site["tokens"]["C-read"]), timeout=60)
    unknown = requests.get(url, headers=_bearer("pacs_" + "x" * 43), timeout=60)
    assert removed.status_code == unknown.status_code == 401
    assert removed.content == unknown.content
    assert removed.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
    archive = srv.archive()
    try:
        from sqlalchemy import select

        from storage.index.models import AuditEvent

        with archive.sessions() as s:
            details = s.scalars(select(AuditEvent.detail).where(
                AuditEvent.action == "login", AuditEvent.outcome == "failure")).all()
    finally:
        archive.close()
    assert any("removed provider" in (d or "") for d in details)


def test_unknown_provider_names_are_refused(site, tmp_path: Path) -> None:
    r = _cli(site["env"], "token", "create", "--name", f"x-{site['tag']}", "--provider", "no-such")
    assert r.returncode != 0 and "no provider named 'no-such'" in r.stderr
    r = _cli(site["env"], "token", "create", "--name", f"y-{site['tag']}", "--provider",
             site["names"]["C"])
    assert r.returncode != 0 and "no provider named" in r.stderr  # removed: as unknown
    srv = None
    with pytest.raises(RuntimeError, match="not registered"):
        srv = start_server(tmp_path, PACS_PROVIDER_AETS="AE_X=never-added")
    assert srv is None


# -- DIMSE -----------------------------------------------------------------------------------------

FIND_MODELS = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
GET_MODELS = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)
MOVE_MODELS = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)


def _assoc(srv, calling: str, contexts: list[str], roles: list[Any] | None = None,
           handlers: list[Any] | None = None):
    ae = AE(ae_title=calling)
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title, ext_neg=roles or None,
                         evt_handlers=handlers or None)
    return assoc


def _identifier(level: str, uids: tuple[str, str, str], pid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientID = pid if pid is not None else ""
    ds.PatientName = ""
    ds.StudyInstanceUID = uids[0] if level in ("STUDY", "SERIES", "IMAGE") else ""
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID = uids[1]
    if level == "IMAGE":
        ds.SOPInstanceUID = uids[2]
    return ds


def _answers(responses) -> tuple[list[tuple[int, str]], list[str]]:
    """(statuses with comments, the identifiers' patient names) of a response generator."""
    statuses, names = [], []
    for status, identifier in responses:
        if status is None:
            statuses.append((-1, "no response"))
            continue
        keep = ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
                "NumberOfWarningSuboperations", "ErrorComment")
        statuses.append((int(status.Status), str([status.get(k) for k in keep])))
        if identifier is not None and "PatientName" in identifier:
            names.append(str(identifier.PatientName))
    return statuses, names


def _find(srv, model: str, level: str, uids, pid=None, calling="AE_A"):
    assoc = _assoc(srv, calling, [model])
    assert assoc.is_established
    try:
        return _answers(assoc.send_c_find(_identifier(level, uids, pid), model))
    finally:
        assoc.release()


def _get(srv, model: str, uids, calling="AE_A") -> tuple[list, list[str]]:
    got: list[str] = []

    def on_store(event):
        got.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = _assoc(srv, calling, [model, CTImageStorage], [build_role(CTImageStorage, scp_role=True)],
                   [(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        answers, _ = _answers(assoc.send_c_get(_identifier("STUDY", uids, ""), model))
    finally:
        assoc.release()
    return answers, got


def _move(srv, model: str, uids, calling="AE_A") -> list:
    assoc = _assoc(srv, calling, [model])
    assert assoc.is_established
    try:
        answers, _ = _answers(assoc.send_c_move(_identifier("STUDY", uids, ""), "AE_A", model))
    finally:
        assoc.release()
    return answers


def _drain(q: queue.Queue, timeout: float = 0.0) -> list:
    out = []
    try:
        out.append(q.get(timeout=timeout) if timeout else q.get_nowait())
        while True:
            out.append(q.get_nowait())
    except queue.Empty:
        return out


def _commit(srv, received: queue.Queue, sop_uid: str, calling="AE_A") -> Dataset:
    from pacs.commit import PUSH_MODEL_INSTANCE

    assoc = _assoc(srv, calling, [StorageCommitmentPushModel])
    assert assoc.is_established
    info = Dataset()
    info.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = sop_uid
    info.ReferencedSOPSequence = [item]
    try:
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE)
        assert int(status.Status) == 0
    finally:
        assoc.release()
    while True:  # the report comes on an association the archive opens back (wait: deadline)
        kind, payload = received.get(timeout=60)
        if kind == "report" and str(payload.TransactionUID) == str(info.TransactionUID):
            return payload


def test_every_dimse_service_answers_a_foreign_uid_as_an_unknown_one(site, figures) -> None:  # noqa: ANN001
    from pacs.scp import handlers, make_ae
    from storage.config import load_settings

    srv, received = site["srv"], site["received"]
    settings = load_settings(env=srv.env)
    archive = srv.archive()
    try:
        events = {h[0] for h in handlers(archive, settings)}
    finally:
        archive.close()
    services = {cx.abstract_syntax for cx in make_ae(settings).supported_contexts}
    cases = {evt.EVT_C_ECHO, evt.EVT_C_STORE, evt.EVT_C_FIND, evt.EVT_C_GET, evt.EVT_C_MOVE,
             evt.EVT_N_ACTION}
    service_events = {e for e in events if e.name.startswith(("C-", "N-"))
                      or e in (evt.EVT_C_ECHO, evt.EVT_C_STORE, evt.EVT_C_FIND, evt.EVT_C_GET,
                               evt.EVT_C_MOVE, evt.EVT_N_ACTION)}
    assert service_events <= cases, f"DIMSE services without a case: {service_events - cases}"
    qr = {*FIND_MODELS, *GET_MODELS, *MOVE_MODELS}
    assert {s for s in services if "1.2.840.10008.5.1.4.1.2." in s} == qr, "Q/R models without a case"

    b, unknown = site["uids"]["B"], (generate_uid(), generate_uid(), generate_uid())
    b_name = site["people"]["B"][1]
    wrong: list[str] = []
    n = 0
    # C-ECHO: no data; answered for A as for anyone
    assoc = _assoc(srv, "AE_A", [Verification])
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
    n += 1
    # C-FIND: every model and level, by B's UIDs and by the shared Patient ID
    for model in FIND_MODELS:
        levels = ("PATIENT", "STUDY", "SERIES", "IMAGE") if model in (
            PatientRootQueryRetrieveInformationModelFind,) else ("STUDY", "SERIES", "IMAGE")
        for level in levels:
            pid = site["people"]["A"][0] if level == "PATIENT" else None
            foreign = _find(srv, model, level, b, pid)
            stranger = _find(srv, model, level, unknown, pid)
            n += 1
            if b_name in foreign[1]:
                wrong.append(f"C-FIND {model} {level}: B's patient matched")
            if foreign != stranger:
                wrong.append(f"C-FIND {model} {level}: {foreign} vs unknown {stranger}")
            own = _find(srv, model, level, b, pid, calling="AE_B")
            if b_name not in own[1]:
                wrong.append(f"C-FIND {model} {level}: B's own AE does not find B (control)")
    # C-GET: B's study by A gets nothing, as an unknown study
    for model in GET_MODELS:
        foreign, got = _get(srv, model, b)
        stranger, _ = _get(srv, model, unknown)
        n += 1
        if got or foreign != stranger:
            wrong.append(f"C-GET {model}: {foreign} {got} vs unknown {stranger}")
        _, own = _get(srv, model, b, calling="AE_B")
        if own != [b[2]]:
            wrong.append(f"C-GET {model}: B's own AE got {own} (control)")
    # C-MOVE: to A's own modality: nothing of B's arrives
    for model in MOVE_MODELS:
        _drain(received)
        foreign = _move(srv, model, b)
        stranger = _move(srv, model, unknown)
        n += 1
        sent = [uid for kind, uid in _drain(received) if kind == "store"]
        if sent or foreign != stranger:
            wrong.append(f"C-MOVE {model}: {foreign} {sent} vs unknown {stranger}")
        _move(srv, model, b, calling="AE_B")  # control: B moves its own study to the same AE
        own = [uid for kind, uid in _drain(received, timeout=30) if kind == "store"]
        if b[2] not in own:
            wrong.append(f"C-MOVE {model}: B's own move sent {own} (control)")
    # N-ACTION storage commitment: B's instance is "no such instance" for A, as an unknown one
    foreign_r = _commit(srv, received, b[2])
    stranger_r = _commit(srv, received, unknown[2])
    n += 1
    reasons = [[int(i.FailureReason) for i in r.get("FailedSOPSequence", [])] for r in (foreign_r, stranger_r)]
    if reasons[0] != reasons[1] or reasons[0] != [0x0112] or foreign_r.get("ReferencedSOPSequence"):
        wrong.append(f"N-ACTION: B's instance {reasons[0]} vs unknown {reasons[1]}")
    # C-STORE: into B's study, and over B's SOP Instance UID: refused, B untouched
    into_b = make_image(patient_id=site["people"]["A"][0], patient_name=site["people"]["A"][1],
                        study_uid=b[0], rows=8, columns=8)
    over_b = make_image(patient_id=site["people"]["A"][0], patient_name=site["people"]["A"][1],
                        sop_uid=b[2], rows=8, columns=8)
    for what, ds in (("into B's study", into_b), ("over B's SOP Instance UID", over_b)):
        code = _c_store("AE_A", srv, ds)
        n += 1
        if code == 0:
            wrong.append(f"C-STORE {what}: stored (Success)")
    _b_intact(site)
    assert not wrong, "\n".join(wrong)
    figures(dimse_cases=n, qr_models=len(qr), storage_classes=len(services) - len(qr) - 2)


def test_removed_providers_ae_is_rejected_and_audited(site) -> None:
    assoc = _assoc(site["srv"], "AE_C", [Verification])
    assert assoc.is_rejected, "a removed provider's AE title is rejected (A-ASSOCIATE-RJ)"
    archive = site["srv"].archive()
    try:
        from sqlalchemy import select

        from storage.index.models import AuditEvent

        with archive.sessions() as s:
            rows = s.execute(select(AuditEvent.actor, AuditEvent.detail).where(
                AuditEvent.action == "login", AuditEvent.outcome == "failure")).all()
    finally:
        archive.close()
    assert any(a == "AE_C" and "provider" in (d or "") for a, d in rows)


def test_cross_tenant_token_sees_both_providers(site) -> None:
    srv = site["srv"]
    for who in ("A", "B"):
        study = site["uids"][who][0]
        r = requests.get(f"{srv.http_url}/dicom-web/studies/{study}/metadata",
                         headers=_bearer(site["tokens"]["cross"]), timeout=60)
        assert r.status_code == 200, (who, r.status_code)
        assert json.loads(r.content)[0]["0020000D"]["Value"] == [study]
