"""Audit to a repository (IHE ATNA, issue 19 part 5): PS3.15 A.5 messages over RFC 5424 syslog to a real
rsyslog, over RFC 5425 TLS (mutual) and RFC 5426 UDP; every kind of event, no patient in clear, nothing
lost while the repository is down."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import insert

from pacs.atna import Sender
from storage.atna import messages
from storage.atna.queue import DeliveryQueue
from storage.config import ConfigError, load_settings
from storage.index.models import AuditEvent
from tests import atna_check
from tests.conftest import ROOT, require, start_server
from tests.dicomgen import make_study
from tests.rsyslog import Rsyslog
from tests.tlscerts import make_pki

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10].upper()}"


@pytest.fixture
def rsyslog(tmp_path):
    pki = make_pki(tmp_path / "pki")
    rs = Rsyslog(tmp_path / "rsyslog", pki)
    rs.start()
    yield rs
    rs.stop()


# -- the mapping -----------------------------------------------------------------------------------

_RECORDED = [re.compile(p) for p in (
    r'\.record\(\s*"([a-z-]+)"', r'audit_read(?:_coalesced)?\(\s*"([a-z-]+)"', r'"action":\s*"([a-z-]+)"',
    r'record_lifecycle\([^,]+,\s*"([a-z-]+)"', r'"(retrieve-begin)"')]


def test_every_recorded_action_has_its_message():
    """Each action the code base records is mapped to a PS3.15 message (none falls to the default)."""
    found: set[str] = set()
    for folder in ("storage", "pacs", "dicomweb"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in _RECORDED:
                found.update(pattern.findall(text))
    assert {"store", "retrieve", "query", "login", "shred", "export", "start", "stop"} <= found
    assert sorted(found - set(messages.KINDS)) == []


def _row(action: str, **kw) -> AuditEvent:
    return AuditEvent(id=1, at=datetime(2026, 12, 3, 12, 0, 0, 123456), actor=kw.get("actor", "CT1"),
                      action=action, outcome=kw.get("outcome", "success"), patient_ref=kw.get("patient_ref", 7),
                      study_uid=kw.get("study_uid", "1.2.3.4"), source=kw.get("source", "127.0.0.1:4000"),
                      detail=kw.get("detail", "detail\nwith a line\x01 break"))


def test_messages_follow_the_schema_and_name_patients_by_reference():
    source = messages.AuditSource("PACS-A", "PACS", "node1")
    for action in [*messages.KINDS, "something-new"]:
        root = atna_check.check(messages.build(_row(action), source).decode())
        kind = messages.KINDS.get(action, messages.UNKNOWN)
        assert atna_check.event_id(root) == kind.event.code
        patient = [po for po in root.findall("ParticipantObjectIdentification")
                   if po.get("ParticipantObjectTypeCode") == "1"]
        assert [po.get("ParticipantObjectID") for po in patient] == ["7"]
    store = atna_check.check(messages.build(_row("store"), source).decode())
    roles = {ap.get("UserID"): ap.find("RoleIDCode").get("csd-code") for ap in store.findall("ActiveParticipant")}
    assert roles == {"CT1": "110153", "PACS": "110152"}  # the modality sent, we received
    assert store.find("ActiveParticipant").get("NetworkAccessPointID") == "127.0.0.1"
    sent = atna_check.check(messages.build(_row("retrieve", detail="C-GET: 3 instance(s)"), source).decode())
    assert [c.get("NumberOfInstances") for c in sent.iter("SOPClass")] == ["3"]
    v6 = atna_check.check(messages.build(_row("login", source="[::1]:4000"), source).decode())
    assert v6.find("ActiveParticipant").get("NetworkAccessPointID") == "::1"


def test_audit_repository_setting_is_checked(tmp_path):
    env = {"PACS_DATA_DIR": str(tmp_path)}
    for bad in ("tcp://arr:514", "tls://arr", "udp://:514", "tls://arr:6514/x", "arr:514"):
        with pytest.raises(ConfigError, match="audit_repository"):
            load_settings(env=env, audit_repository=bad)
    with pytest.raises(ConfigError, match="tls_ca_file"):
        load_settings(env=env, audit_repository="tls://arr:6514")
    assert load_settings(env=env, audit_repository="udp://127.0.0.1:514").audit_repository


# -- the queue -------------------------------------------------------------------------------------

def test_one_sender_holds_the_lease(archive):
    name = f"tls://{_unique('h')}:6514"
    a = DeliveryQueue(archive.sessions, archive.write_sessions, name, "node-a")
    b = DeliveryQueue(archive.sessions, archive.write_sessions, name, "node-b")
    archive.audit.record("start", actor="test")
    assert a.claim() and a.claim()  # renewing
    assert not b.claim()
    a.release()
    assert b.claim()
    assert not a.delivered(10**6)  # a lost the lease: the marker stays where b has it
    assert not a.claim()


def test_pending_stops_at_a_missing_id_until_it_is_given_up(archive):
    name = f"udp://{_unique('h')}:514"
    archive.audit.record("start", actor="test")
    q = DeliveryQueue(archive.sessions, archive.write_sessions, name, "me", gap_wait=3600)
    assert q.claim()
    first = q.delivered_id
    archive.audit.record("stop", actor="test", detail="before the gap")
    now = datetime.now(UTC).replace(tzinfo=None)
    with archive.write_sessions.begin() as s:  # an id taken by a transaction not committed yet
        s.execute(insert(AuditEvent).values(id=first + 3, at=now, actor="t", action="stop", outcome="success",
                                            study_uid="", source="", detail="after the gap"))
    assert [r.detail for r in q.pending()] == ["before the gap"]
    q.gap_wait = 0  # waited long enough: a rolled-back write, passed over
    assert [r.detail for r in q.pending()] == ["before the gap", "after the gap"]


# -- UDP (RFC 5426), in process --------------------------------------------------------------------

def test_every_kind_over_udp(rsyslog, archive, tmp_path):
    settings = load_settings(env={"PACS_DATA_DIR": str(tmp_path / "d")},
                             audit_repository=f"udp://127.0.0.1:{rsyslog.udp_port}", audit_source_id=_unique("SRC"))
    start = datetime.now(UTC).replace(tzinfo=None)
    for action in messages.KINDS:
        archive.audit.record(action, actor="ACTOR", source="127.0.0.1:1234", patient_ref=5, study_uid="1.2.3",
                             detail=f"{action} test")
    sender = Sender(settings, archive.sessions, archive.write_sessions, start_after=start)
    deadline = time.monotonic() + 30
    while sender.queue.delivered_id == 0 or sender.queue.pending():
        sender.step()
        assert time.monotonic() < deadline
    sender.drain(0)
    got = rsyslog.wait_for(lambda g: len(g) >= len(messages.KINDS))
    assert {g["pri"] for g in got} == {"85"} and {g["msgid"] for g in got} == {"IHE+RFC-3881"}
    roots = [atna_check.check(g["msg"]) for g in got]
    assert {r.find("AuditSourceIdentification").get("AuditSourceID") for r in roots} == {settings.audit_source_id}
    assert sorted(atna_check.event_id(r) for r in roots) == sorted(k.event.code for k in messages.KINDS.values())


def test_udp_repository_not_listening_keeps_the_events(archive, tmp_path):
    from tests.conftest import free_port

    settings = load_settings(env={"PACS_DATA_DIR": str(tmp_path / "d")},
                             audit_repository=f"udp://127.0.0.1:{free_port()}")
    start = datetime.now(UTC).replace(tzinfo=None)
    archive.audit.record("start", actor="t")
    sender = Sender(settings, archive.sessions, archive.write_sessions, start_after=start)
    from pacs.atna import Unavailable

    with pytest.raises(Unavailable):
        for _ in range(3):  # the first datagram may go before the ICMP answer says nobody listens
            sender.step()
    assert [r.action for r in sender.queue.pending()] == ["start"]


# -- the real server over TLS (RFC 5425) -----------------------------------------------------------

def _kinds(got: list[dict[str, str]]) -> set[tuple[str, str | None]]:
    out = set()
    for g in got:
        root = atna_check.check(g["msg"])
        out.add((atna_check.event_id(root), atna_check.event_type(root)))
    return out


def _stamps(got: list[dict[str, str]]) -> set[str]:
    return {atna_check.check(g["msg"]).find("EventIdentification").get("EventDateTime") for g in got}


def _waiting(srv) -> float:  # noqa: ANN001
    text = requests.get(f"{srv.http_url}/metrics", timeout=30).text
    return float(re.search(r"^pacs_audit_events_waiting (\S+)$", text, re.M).group(1))


def _recorded_since_start(srv) -> set[str]:  # noqa: ANN001
    """EventDateTime of every audit event recorded since the server's Application Start."""
    archive = srv.archive()
    try:
        rows = list(archive.audit.events(limit=100_000))
    finally:
        archive.close()
    start = next(r for r in rows if r.action == "start")
    return {r.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for r in rows if r.id >= start.id}


def _run(cmd: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, **kw)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return p


def test_served_events_reach_rsyslog_over_tls_and_survive_its_restart(rsyslog, tmp_path):
    pki = rsyslog.pki
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_AUDIT_REPOSITORY=f"tls://127.0.0.1:{rsyslog.tls_port}",
                       PACS_TLS_CA_FILE=str(pki.ca), PACS_TLS_CERT_FILE=str(pki.server_cert),
                       PACS_TLS_KEY_FILE=str(pki.server_key))
    try:
        rsyslog.wait_for(lambda g: ("110100", "110120") in _kinds(g))  # Application Start
        pid, name = _unique("ATNA"), f"Atnaperson^{_unique('N')}"
        paths = make_study(tmp_path / "a", n_series=1, per_series=2, patient_id=pid, patient_name=name)
        import pydicom

        study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        port = str(srv.dicom_port)
        _run([require("storescu"), "-aec", srv.ae_title, "+sd", "127.0.0.1", port, str(tmp_path / "a")])
        _run([require("findscu"), "-S", "-aec", srv.ae_title, "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"PatientID={pid}", "-k", "StudyInstanceUID", "127.0.0.1", port])
        (tmp_path / "got").mkdir()
        _run([require("getscu"), "-S", "-aec", srv.ae_title, "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={study}", "-od", str(tmp_path / "got"), "127.0.0.1", port])
        web = srv.dicomweb_url
        assert requests.get(f"{web}/studies", params={"PatientID": pid}, timeout=30).status_code == 200
        assert requests.get(f"{web}/studies/{study}/metadata", timeout=30).status_code == 200
        assert requests.get(f"{web}/studies/{study}", timeout=30,
                            headers={"Accept": 'multipart/related; type="application/dicom"'}).status_code == 200
        assert requests.get(f"{web}/studies", timeout=30,
                            headers={"Authorization": "Bearer not-a-token"}).status_code == 401
        srv.pacs("token", "create", "--name", _unique("tok"))
        srv.pacs("keys", "rotate")
        srv.pacs("export", "--patient-id", pid, "--format", "zip", "--out", str(tmp_path / "x.zip"))
        srv.pacs("letter", "issue", "--patient-id", pid)
        wanted = {("110104", None), ("110102", None), ("110103", None), ("110112", None), ("110106", None),
                  ("110114", "110122"), ("110113", "110137"), ("110113", "110129")}
        got = rsyslog.wait_for(lambda g: wanted <= _kinds(g))
        transferred = [atna_check.check(g["msg"]) for g in got if '"110104"' in g["msg"]]
        assert {a.get("EventActionCode") for r in transferred for a in [r.find("EventIdentification")]} == {"C", "R"}
        assert any(study in atna_check.object_ids(r) for r in transferred)
        stored = [r for r in transferred if r.find("EventIdentification").get("EventActionCode") == "C"]
        assert {c.get("UID") for r in stored for c in r.iter("SOPClass")} == {CT_IMAGE_STORAGE}

        # the receiver restarts: what happens meanwhile waits in the index and arrives afterwards
        rsyslog.wait_for(lambda g: _recorded_since_start(srv) <= _stamps(g))  # nothing in flight
        rsyslog.stop()
        before = len(rsyslog.lines())
        paths_b = make_study(tmp_path / "b", n_series=1, per_series=3, patient_id=pid, patient_name=name)
        study_b = str(pydicom.dcmread(paths_b[0], stop_before_pixels=True).StudyInstanceUID)
        _run([require("storescu"), "-aec", srv.ae_title, "+sd", "127.0.0.1", port, str(tmp_path / "b")])
        srv.pacs("patient", "shred", "--patient-id", pid, "--yes")
        assert len(rsyslog.lines()) == before  # the commands returned: their events are in the index
        assert _waiting(srv) >= 4  # /metrics tells the operator: 3 stores and the shred wait
        rsyslog.start()
        got = rsyslog.wait_for(lambda g: ("110110", None) in _kinds(g)
                               and sum(study_b in atna_check.object_ids(atna_check.check(x["msg"]))
                                       for x in g) >= 3, timeout=120)
        deadline = time.monotonic() + 30
        while _waiting(srv) != 0:
            assert time.monotonic() < deadline, "pacs_audit_events_waiting stays above 0"
            time.sleep(0.2)
    finally:
        srv.stop()
    got = rsyslog.wait_for(lambda g: ("110100", "110121") in _kinds(g))  # Application Stop, at the end

    # nothing lost: every event recorded since the start arrived (EventDateTime is the row's time)
    assert _recorded_since_start(srv) - _stamps(got) == set()
    raw = rsyslog.out.read_text()
    assert pid not in raw and name.split("^")[1] not in raw and "Atnaperson" not in raw


def test_two_senders_deliver_each_event_once(rsyslog, archive, tmp_path):
    """Two nodes' senders on one index: the lease holder sends, the other waits; no event twice."""
    settings = load_settings(env={"PACS_DATA_DIR": str(tmp_path / "d")},
                             audit_repository=f"udp://127.0.0.1:{rsyslog.udp_port}")
    start = datetime.now(UTC).replace(tzinfo=None)
    senders = [Sender(settings, archive.sessions, archive.write_sessions, start_after=start, owner=f"node-{i}")
               for i in range(2)]
    marks = [_unique("once") for _ in range(40)]
    for i, mark in enumerate(marks):
        archive.audit.record("read-metadata", actor="a", study_uid=f"1.2.{i}", detail=mark)
        for sender in senders:
            sender.step()
    while senders[0].step() or senders[1].step():
        pass
    got = rsyslog.wait_for(lambda g: sum(any(m in x["msg"] for m in marks) for x in g) >= len(marks))
    texts = [x["msg"] for x in got]
    assert all(sum(m in t for t in texts) == 1 for m in marks)


def _tls_sender(archive, tmp_path, rsyslog, **tls) -> Sender:
    settings = load_settings(env={"PACS_DATA_DIR": str(tmp_path / "d")},
                             audit_repository=f"tls://127.0.0.1:{rsyslog.tls_port}", **tls)
    archive.audit.record("start", actor="t", detail=_unique("refused"))
    return Sender(settings, archive.sessions, archive.write_sessions, start_after=datetime(2000, 1, 1),
                  owner=_unique("o"))


def test_tls_repository_with_a_certificate_we_do_not_trust_gets_nothing(rsyslog, archive, tmp_path):
    from pacs.atna import Unavailable

    other = make_pki(tmp_path / "other")
    sender = _tls_sender(archive, tmp_path, rsyslog, tls_ca_file=str(other.ca))
    with pytest.raises(Unavailable):
        sender.step()
    assert sender.queue.pending()  # still waiting
    assert rsyslog.lines() == []


def test_tls_without_our_certificate_the_repository_refuses_and_nothing_is_lost(rsyslog, archive, tmp_path):
    """rsyslog asks for the node's certificate (mutual authentication): without one the batch is not
    counted as delivered; with it, it arrives."""
    from pacs.atna import Unavailable

    sender = _tls_sender(archive, tmp_path, rsyslog, tls_ca_file=str(rsyslog.pki.ca))
    with pytest.raises(Unavailable):
        sender.step()
    pending = [r.detail for r in sender.queue.pending()]
    assert pending and rsyslog.lines() == []
    sender.queue.release()
    good = _tls_sender(archive, tmp_path, rsyslog, tls_ca_file=str(rsyslog.pki.ca),
                       tls_cert_file=str(rsyslog.pki.server_cert), tls_key_file=str(rsyslog.pki.server_key))
    while good.step():
        pass
    rsyslog.wait_for(lambda g: all(any(d in x["msg"] for x in g) for d in pending))


@pytest.mark.parametrize(("setting", "said"), [("udp://arr", "audit_repository"), ("tls://127.0.0.1:6514", "tls_ca_file")])
def test_pacs_serve_refuses_an_unusable_audit_repository_in_one_line(tmp_path, setting, said):
    import os

    from tests.conftest import PACS, free_port

    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_PORT=str(free_port()), PACS_AUDIT_REPOSITORY=setting, PACS_TLS_CA_FILE=str(garbage))
    run = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 1
    assert said in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "data" / "index.sqlite").exists()
