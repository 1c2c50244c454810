"""``pacs letter issue --email`` against a real SMTP receiver (aiosmtpd) with STARTTLS.

The receiver requires STARTTLS before MAIL and AUTH, with a certificate this test makes; the
client trusts it through ``smtp_ca_file``. Checked: headers, body, that neither the access code
nor the passcode is in the mail unless ``mail_codes`` is on, that a failed delivery is reported
(exit status 3), audited, and leaves the letter valid.
"""

from __future__ import annotations

import datetime as dt
import email
import ipaddress
import os
import ssl
import subprocess
import uuid
from email import policy
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import PACS, free_port

aiosmtpd = pytest.importorskip("aiosmtpd.controller")
from aiosmtpd.smtp import AuthResult  # noqa: E402

USER, PASSWORD = "pacs-mailer", "s3cret-" + uuid.uuid4().hex[:8]


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cryptography), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test smtp")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp.pem", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Inbox:
    """aiosmtpd handler keeping what arrived, and whether it came over TLS."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], bytes, bool]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                           session.ssl is not None))
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def smtp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smtp")
    cert, key = make_cert(folder)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    inbox = Inbox()
    port = free_port()
    controller = aiosmtpd.Controller(inbox, hostname="127.0.0.1", port=port, tls_context=ctx,
                                     require_starttls=True, auth_require_tls=True,
                                     authenticator=authenticator)
    controller.start()
    try:
        yield inbox, port, cert
    finally:
        controller.stop()


@pytest.fixture
def site(tmp_path: Path, smtp):
    """A data directory with one patient (attached note), and the PACS_* settings for mail."""
    _inbox, port, cert = smtp
    pid = f"MAIL-{uuid.uuid4().hex[:8]}"
    password = tmp_path / "smtp.password"
    password.write_text(PASSWORD + "\n")
    env = {"PACS_DATA_DIR": str(tmp_path / "data"), "PACS_SMTP_HOST": "127.0.0.1",
           "PACS_SMTP_PORT": str(port), "PACS_SMTP_USER": USER,
           "PACS_SMTP_PASSWORD_FILE": str(password), "PACS_SMTP_FROM": "records@clinic.example",
           "PACS_SMTP_CA_FILE": str(cert), "PACS_PUBLIC_URL": "https://records.clinic.example"}
    note = tmp_path / "note.txt"
    note.write_text("Results discussed by phone.\n")
    run(env, "attach", str(note), "--patient-id", pid, "--patient-name", "Mail^Mia")
    return env, pid


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    p = subprocess.run([PACS, *args], env={**base, **env}, capture_output=True, text=True,
                       timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def printed(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())
            if v}


def audit_rows(env: dict[str, str], action: str) -> list[list[str]]:
    out = run(env, "audit", "--action", action).stdout
    return [line.split("\t") for line in out.splitlines()[1:] if line.strip()]


def test_letter_mailed_without_codes(smtp, site) -> None:
    inbox, _port, _cert = smtp
    env, pid = site
    to = f"mia.{uuid.uuid4().hex[:6]}@patient.example"
    before = len(inbox.mails)
    p = run(env, "letter", "issue", "--patient-id", pid, "--email", to)
    letter = printed(p.stdout)
    assert letter["email"] == f"sent to {to}"
    assert len(inbox.mails) == before + 1
    sender, rcpts, raw, over_tls = inbox.mails[-1]
    assert over_tls and sender == "records@clinic.example" and rcpts == [to]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["From"] == "records@clinic.example" and msg["To"] == to
    assert msg["Subject"] == "Your medical images"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Message-ID"].endswith(
        "@clinic.example>")
    assert msg["Date"]
    body = msg.get_body(("plain",)).get_content()
    assert letter["url"].startswith("https://records.clinic.example/letters/")
    assert letter["url"] in body and "never sent by email" in body
    text = raw.decode("utf-8", "replace")
    code, passcode = letter["access code"], letter["passcode"]
    for secret in [code, code.replace("-", ""), passcode]:
        assert secret not in text, secret
    assert pid not in text and "Mia" not in text  # the mail names no patient
    rows = audit_rows(env, "letter-mail")
    assert rows and rows[-1][2] == "success" and "patient.example" in rows[-1][-1]
    assert to not in "\n".join("\t".join(r) for r in rows)  # the mailbox itself is not logged


def test_codes_in_the_mail_only_when_configured(smtp, site) -> None:
    inbox, _port, _cert = smtp
    env, pid = site
    to = "codes@patient.example"
    p = run({**env, "PACS_MAIL_CODES": "true"}, "letter", "issue", "--patient-id", pid,
            "--email", to)
    letter = printed(p.stdout)
    body = email.message_from_bytes(inbox.mails[-1][2], policy=policy.default).get_body(
        ("plain",)).get_content()
    assert letter["url"] in body and letter["access code"] in body and letter["passcode"] in body


@pytest.mark.parametrize("problem", ["password", "untrusted", "closed"])
def test_failed_delivery_reported_audited_letter_valid(smtp, site, tmp_path: Path,
                                                       problem: str) -> None:
    inbox, _port, _cert = smtp
    env, pid = site
    if problem == "password":
        (tmp_path / "wrong").write_text("not-the-password")
        env = {**env, "PACS_SMTP_PASSWORD_FILE": str(tmp_path / "wrong")}
        says = "user name or password"
    elif problem == "untrusted":
        env = {k: v for k, v in env.items() if k != "PACS_SMTP_CA_FILE"}  # system CAs only
        says = "TLS with the mail server failed"
    else:
        env = {**env, "PACS_SMTP_PORT": str(free_port())}  # nobody listens there
        says = "cannot be reached"
    before = len(inbox.mails)
    p = run(env, "letter", "issue", "--patient-id", pid, "--email", "x@patient.example",
            check=False)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "NOT SENT" in p.stderr and says in p.stderr and "stays valid" in p.stderr
    assert PASSWORD not in p.stdout + p.stderr
    letter = printed(p.stdout)
    assert letter["access code"] and len(inbox.mails) == before
    listed = run(env, "letter", "list", "--patient-id", pid).stdout
    row = next(line for line in listed.splitlines() if line.startswith(letter["letter"] + "\t"))
    assert "\tactive\t" in row or "\tvalid\t" in row, row
    failures = [r for r in audit_rows(env, "letter-mail") if r[2] == "failure"]
    assert failures and says in failures[-1][-1]


def test_bad_address_or_no_server_refused_before_issuing(site) -> None:
    env, pid = site
    for address in ["a@patient.example, b@patient.example", "no-at-sign", "x@y\r\nBcc: z@w.example"]:
        p = run(env, "letter", "issue", "--patient-id", pid, "--email", address, check=False)
        assert p.returncode == 2 and "not a single email address" in p.stderr
    bare = {k: v for k, v in env.items() if not k.startswith("PACS_SMTP")}
    p = run(bare, "letter", "issue", "--patient-id", pid, "--email", "a@patient.example",
            check=False)
    assert p.returncode == 2 and "no mail server is configured" in p.stderr
    assert run(env, "letter", "list", "--patient-id", pid).stdout.count("\n") == 1  # header only
