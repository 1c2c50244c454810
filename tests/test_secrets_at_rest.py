"""Secrets never in clear at rest: API tokens, access codes, passcodes and session ids are kept only as
hashes (SHA-256, HMAC-SHA256, Argon2id). Every column of every table, and every file under the data
directory, is searched for each secret in every form a careless change might store it in."""

from __future__ import annotations

import base64
import hashlib

import sqlalchemy as sa

from storage.letters import Letters
from storage.secrets import normalize_access_code
from storage.tokens import create_token, lookup_token
from tests.dicomgen import make_study


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="),
            raw.upper(), raw.lower()]


def _every_value(archive) -> list[bytes]:  # noqa: ANN001
    out: list[bytes] = []
    meta = sa.MetaData()
    meta.reflect(archive.engine)
    with archive.engine.connect() as c:
        for table in meta.sorted_tables:
            for row in c.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        out.append(bytes(value))
                    elif value is not None:
                        out.append(str(value).encode())
    return out


def test_tokens_codes_passcodes_and_sessions_are_stored_only_as_hashes(archive, tmp_path):
    token = create_token(archive, "rest-check", "read")
    assert lookup_token(archive, token) == ("rest-check", "read")
    stored = archive.store(make_study(tmp_path / "in", n_series=1, per_series=1,
                                      patient_id="REST-1")[0])
    letters = Letters(archive)
    issued = letters.issue(stored.patient_ref)
    grant = letters.authenticate(issued.selector, issued.access_code, "192.0.2.40")
    session = letters.open_session(grant)
    assert letters.session(issued.selector, session) is not None  # the secrets work ...

    secrets = {"API token": token, "access code": issued.access_code,
               "access code (normalised)": normalize_access_code(issued.access_code),
               "passcode": issued.passcode, "session id": session}
    values = _every_value(archive)
    files = [p.read_bytes() for p in archive.settings.data_dir.rglob("*") if p.is_file()]
    for what, secret in secrets.items():  # ... and none of them is anywhere at rest
        for form in _forms(secret):
            assert not any(form in v for v in values), f"{what} stored in the index"
            assert not any(form in f for f in files), f"{what} in a file under the data directory"
    # what is there instead: the hashes
    assert any(hashlib.sha256(token.encode()).digest() == v for v in values)
    assert any(hashlib.sha256(session.encode()).digest() == v for v in values)
    assert any(v.startswith(b"$argon2id$") for v in values)


def test_secret_settings_from_files_and_never_in_repr(tmp_path):
    from storage.config import load_settings

    url_file = tmp_path / "db-url"
    url_file.write_text("postgresql+psycopg://pacs:s3cr3t-db-pw@127.0.0.1/pacs\n")
    pin_file = tmp_path / "pin"
    pin_file.write_text("pin-from-file-7731\n")
    s = load_settings(env={"PACS_DATABASE_URL_FILE": str(url_file), "PACS_PKCS11_PIN_FILE": str(pin_file),
                           "PACS_MASTER_KEY": "pkcs11:token=t;object=o", "PACS_PKCS11_MODULE": "/m.so"})
    assert s.database_url == "postgresql+psycopg://pacs:s3cr3t-db-pw@127.0.0.1/pacs"
    from storage.hsm import read_pin

    assert read_pin(s) == "pin-from-file-7731"
    assert "s3cr3t-db-pw" not in repr(s) and "pin-from-file" not in repr(s)
