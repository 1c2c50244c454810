"""Providers as tenants (issue 19 part 1): settings, patient identity, tokens, and a client
certificate that names its provider over DICOM TLS (dcmtk ``storescu +tls`` and pynetdicom)."""

from __future__ import annotations

import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import select

from storage.config import ConfigError, load_settings
from storage.errors import BadInput, NotFound
from storage.index.models import Patient
from storage.providers import add_provider, remove_provider
from storage.tenancy import DEFAULT, ProviderRef, patient_identity
from storage.tokens import create_token, list_tokens, token_holder
from tests.conftest import PACS, require, start_server
from tests.dicomgen import make_image, write
from tests.tlscerts import make_pki


def test_providers_table_in_the_configuration_file(tmp_path: Path) -> None:
    fp = "AB:" * 31 + "CD"
    conf = tmp_path / "pacs.toml"
    conf.write_text(f"""
[providers.clinic-a]
calling_aets = ["CLINIC_A_CT", "CLINIC_A_MR"]
certificates = ["{fp}"]

[providers.clinic-b]
calling_aets = ["CLINIC_B"]
certificates = ["CN=scanner-b"]
""")
    s = load_settings(conf, env={"PACS_DATA_DIR": str(tmp_path)})
    assert s.provider_aets == {"CLINIC_A_CT": "clinic-a", "CLINIC_A_MR": "clinic-a",
                               "CLINIC_B": "clinic-b"}
    assert s.provider_certificates == {fp.replace(":", "").lower(): "clinic-a",
                                       "CN=scanner-b": "clinic-b"}
    env = {"PACS_DATA_DIR": str(tmp_path), "PACS_PROVIDER_AETS": "X1=p1, X2=p2",
           "PACS_CROSS_TENANT_AETS": "ROUTER"}
    s = load_settings(env=env)
    assert s.provider_aets == {"X1": "p1", "X2": "p2"} and s.cross_tenant_aets == ["ROUTER"]


@pytest.mark.parametrize("env, words", [
    ({"PACS_PROVIDER_AETS": "NOPROVIDER"}, "CREDENTIAL=provider"),
    ({"PACS_PROVIDER_AETS": "WAY_TOO_LONG_AE_TITLE=p"}, "longer than 16"),
    ({"PACS_PROVIDER_CERTIFICATES": "abcd=p"}, "SHA-256 fingerprint"),
    ({"PACS_PROVIDER_AETS": "R=p", "PACS_CROSS_TENANT_AETS": "R"}, "also listed for a provider"),
])
def test_bad_provider_settings_are_refused(tmp_path: Path, env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(env={"PACS_DATA_DIR": str(tmp_path), **env})


def test_one_ae_title_for_two_providers_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "pacs.toml"
    conf.write_text('[providers.a]\ncalling_aets = ["CT"]\n[providers.b]\ncalling_aets = ["CT"]\n')
    with pytest.raises(ConfigError, match="two providers"):
        load_settings(conf, env={"PACS_DATA_DIR": str(tmp_path)})


def test_patient_identity_is_per_provider_and_unchanged_for_default() -> None:
    a, b = ProviderRef(2, "a"), ProviderRef(3, "b")
    assert patient_identity(DEFAULT, "", "12345") == "|12345"  # as before providers: same hashes
    assert patient_identity(a, "", "12345") != patient_identity(b, "", "12345")
    assert patient_identity(a, "HOSP", "12345") != patient_identity(b, "HOSP", "12345")
    assert patient_identity(a, "", "12345") == patient_identity(a, "a", "12345")  # issuer = name


def test_tokens_act_for_their_provider(archive) -> None:
    name = f"tok-{uuid.uuid4().hex[:8]}"
    p = add_provider(archive, name)
    token = create_token(archive, f"{name}-t", "admin", provider=name)
    holder = token_holder(archive, token)
    assert holder is not None and holder.provider.id == p.id and not holder.cross_tenant
    ops = token_holder(archive, create_token(archive, f"{name}-ops", "read", cross_tenant=True))
    assert ops is not None and ops.cross_tenant
    plain = token_holder(archive, create_token(archive, f"{name}-plain", "read"))
    assert plain is not None and plain.provider == DEFAULT
    with pytest.raises(NotFound):
        create_token(archive, f"{name}-x", "read", provider="no-such-provider")
    with pytest.raises(BadInput):
        create_token(archive, f"{name}-y", "read", provider=name, cross_tenant=True)
    listed = {t.name: (t.provider, t.cross_tenant) for t in list_tokens(archive)}
    assert listed[f"{name}-t"] == (name, False) and listed[f"{name}-ops"][1] is True
    remove_provider(archive, name)
    gone = token_holder(archive, token)
    assert gone is not None and gone.provider_removed


def test_pacs_provider_commands(tmp_path: Path) -> None:
    env = {"PATH": __import__("os").environ["PATH"], "PACS_DATA_DIR": str(tmp_path / "data")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PACS, *args], env=env, capture_output=True, text=True, timeout=120)

    assert run("provider", "add", "Clinic One").returncode == 0
    dup = run("provider", "add", "Clinic One")
    assert dup.returncode != 0 and "exists already" in dup.stderr
    bad = run("provider", "add", "../etc")
    assert bad.returncode != 0 and "provider name" in bad.stderr
    listed = run("provider", "list").stdout
    assert "Clinic One\t" in listed and "default\t1\t" in listed
    pid = f"LET-{uuid.uuid4().hex[:8]}"
    path = write(make_image(patient_id=pid, rows=8, columns=8), tmp_path / "in")
    nope = run("import", str(path), "--provider", "no-such")
    assert nope.returncode != 0 and "no provider named" in nope.stderr
    imported = run("import", str(path), "--provider", "Clinic One")
    assert imported.returncode == 0 and "stored 1" in imported.stdout, imported.stderr
    letter = run("letter", "issue", "--patient-id", pid, "--provider", "Clinic One")
    assert letter.returncode == 0 and "access code:" in letter.stdout, letter.stderr
    elsewhere = run("letter", "issue", "--patient-id", pid)  # not default's patient
    assert elsewhere.returncode != 0 and "no such patient" in elsewhere.stderr
    assert run("provider", "remove", "Clinic One").returncode == 0
    assert "Clinic One" not in run("provider", "list").stdout
    assert "Clinic One" in run("provider", "list", "--all").stdout
    again = run("provider", "remove", "Clinic One")
    assert again.returncode != 0 and "no provider named" in again.stderr
    assert run("provider", "remove", "default").returncode != 0


def test_a_client_certificate_names_its_provider(tmp_path: Path) -> None:
    """Mutual TLS: the certificate's SHA-256 fingerprint maps to provider ``certs``; what dcmtk
    stores with it lands there whatever the calling AE title; the same AE title without the
    certificate (plain port: provider default) finds nothing of it."""
    require("storescu")
    from tests.conftest import free_port

    pki = make_pki(tmp_path / "pki")
    cert = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    name = f"certs-{uuid.uuid4().hex[:6]}"
    env = {"PATH": __import__("os").environ["PATH"], "PACS_DATA_DIR": str(tmp_path / "data")}
    assert subprocess.run([PACS, "provider", "add", name], env=env, capture_output=True,
                          timeout=120).returncode == 0
    tls_port = free_port()
    srv = start_server(tmp_path, PACS_DICOM_TLS="1", PACS_DICOM_TLS_PORT=str(tls_port),
                       PACS_TLS_CERT_FILE=str(pki.server_cert), PACS_TLS_KEY_FILE=str(pki.server_key),
                       PACS_TLS_CA_FILE=str(pki.ca), PACS_DICOM_TLS_VERIFY_CLIENT="1",
                       PACS_PROVIDER_CERTIFICATES=f"{fingerprint}={name}")
    try:
        pid = f"CERT-{uuid.uuid4().hex[:8]}"
        ds = make_image(patient_id=pid, rows=8, columns=8)
        path = write(ds, tmp_path / "in")
        r = subprocess.run(["storescu", "+tls", str(pki.client_key), str(pki.client_cert),
                            "+cf", str(pki.ca), "-aet", "ANY_AE", "-aec", srv.ae_title,
                            "127.0.0.1", str(tls_port), str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        archive = srv.archive()
        try:
            with archive.sessions() as s:
                providers = s.scalars(select(Patient.provider_id)).all()
            from storage.providers import get_provider

            assert providers == [get_provider(archive, name).id]
        finally:
            archive.close()

        def find(port: int, tls: bool) -> list[str]:
            ae = AE(ae_title="ANY_AE")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            args = None
            if tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.load_verify_locations(cafile=str(pki.ca))
                ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
                args = (ctx, "127.0.0.1")
            assoc = ae.associate("127.0.0.1", port, ae_title=srv.ae_title, tls_args=args)
            assert assoc.is_established
            q = Dataset()
            q.QueryRetrieveLevel, q.PatientID, q.StudyInstanceUID = "STUDY", pid, ""
            try:
                return [str(i.StudyInstanceUID) for st, i in assoc.send_c_find(
                    q, StudyRootQueryRetrieveInformationModelFind) if i is not None and st.Status == 0xFF00]
            finally:
                assoc.release()

        assert find(tls_port, True) == [str(ds.StudyInstanceUID)]
        assert find(srv.dicom_port, False) == []
        import requests  # loopback without a token stays cross-tenant (the embedded default)

        r = requests.get(f"{srv.http_url}/dicom-web/studies", params={"PatientID": pid}, timeout=60)
        assert r.status_code == 200 and [s["0020000D"]["Value"][0] for s in r.json()] == [
            str(ds.StudyInstanceUID)]
    finally:
        srv.stop()


def test_which_provider_an_association_acts_for(monkeypatch, tmp_path: Path) -> None:
    """Certificate first (fingerprint or CN), then a cross-tenant AE, then the AE's provider,
    else default (pacs/tenancy.py); the calling AE is read from the A-ASSOCIATE-RQ."""
    import types

    from pacs import tenancy, tls

    fp = "ab" * 32
    s = load_settings(env={"PACS_DATA_DIR": str(tmp_path), "PACS_PROVIDER_AETS": "CT_A=a,CT_B=b",
                           "PACS_PROVIDER_CERTIFICATES": f"{fp}=c,CN=scanner-d=d",
                           "PACS_CROSS_TENANT_AETS": "ROUTER"})

    def assoc(calling: str) -> object:
        rq = types.SimpleNamespace(calling_ae_title=calling)
        return types.SimpleNamespace(requestor=types.SimpleNamespace(ae_title="", primitive=rq))

    cert: list[tuple[str, str] | None] = [None]
    monkeypatch.setattr(tls, "peer_certificate", lambda _assoc: cert[0])
    assert tenancy.provider_name(assoc("CT_A"), s) == "a"
    assert tenancy.provider_name(assoc("CT_B  "), s) == "b"
    assert tenancy.provider_name(assoc("ROUTER"), s) is None  # every provider
    assert tenancy.provider_name(assoc("ELSEWHERE"), s) == "default"
    cert[0] = (fp, "whatever")
    assert tenancy.provider_name(assoc("CT_A"), s) == "c"  # the certificate decides
    cert[0] = ("00" * 32, "scanner-d")
    assert tenancy.provider_name(assoc("ROUTER"), s) == "d"
    cert[0] = ("00" * 32, "unlisted")
    assert tenancy.provider_name(assoc("CT_B"), s) == "b"
