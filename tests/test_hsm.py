"""The master key in a PKCS#11 token (SoftHSM2, Debian's ``softhsm2``): store, restart, read; rotate;
retire; a wrong PIN or a missing token refuses to start and changes nothing; the data directory and
the index are useless without the token."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.archive import Archive
from storage.config import ConfigError, load_settings
from storage.errors import KeyUnavailable
from storage.index.models import PatientKey, SystemKey
from storage.keys import MasterKeyRing, WrappedKey
from storage.letters import Letters
from storage.query import Query
from storage.rotation import RotationError, retire, rotate, versions_in_use
from tests import softhsm
from tests.conftest import PACS, free_port
from tests.dicomgen import make_study


@pytest.fixture
def hsm_settings(tmp_path, db_url):
    if not os.environ.get("PACS_TEST_SOFTHSM2_CONF"):
        pytest.fail("SoftHSM2 is not installed: run scripts/test, which installs softhsm2")
    return load_settings(env={}, data_dir=tmp_path / "data", database_url=db_url,
                         master_key=softhsm.token_uri(), pkcs11_module=softhsm.module(),
                         pkcs11_pin=softhsm.PIN)


def _token_keys(settings) -> dict[int, object]:  # noqa: ANN001
    from storage.hsm import _list_keys, _session, parse_uri

    uri = parse_uri(settings.master_key)
    return _list_keys(_session(settings, uri), uri)


def test_store_restart_read_with_the_key_in_the_token(hsm_settings, tmp_path):
    from pkcs11 import Attribute
    from pkcs11.exceptions import AttributeSensitive

    paths = make_study(tmp_path / "in", n_series=1, per_series=2, patient_id="HSM-1",
                       patient_name="Tokenova^Ida")
    archive = Archive(hsm_settings, create_key=True)
    try:
        results = [archive.store(p) for p in paths]
        assert archive.vault.ring.versions == [1]
    finally:
        archive.close()
    assert not (hsm_settings.data_dir / "master.key").exists()
    [key] = _token_keys(hsm_settings).values()  # made in the token: sensitive, never extractable
    assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
    with pytest.raises(AttributeSensitive):
        key[Attribute.VALUE]  # noqa: B018

    again = Archive(hsm_settings)  # a restart
    try:
        for path, res in zip(paths, results, strict=True):
            assert again.read_bytes(again.instances(sop_uid=res.sop_instance_uid)[0]) == path.read_bytes()
        assert again.patient_values(results[0].patient_ref)["PatientName"] == "Tokenova^Ida"
        assert len(list(again.find(Query("STUDY", filters={"PatientID": "HSM-1"})))) == 1
    finally:
        again.close()


def test_rotate_and_retire_in_the_token(hsm_settings, tmp_path):
    archive = Archive(hsm_settings, create_key=True)
    try:
        paths = make_study(tmp_path / "a", n_series=1, per_series=1, patient_id="HSM-ROT")
        first = archive.store(paths[0])
        letter = Letters(archive).issue(first.patient_ref)
        running = Archive(hsm_settings)  # another process's view: version 1 only
        try:
            r = rotate(archive)
            assert r.version == 2 and r.saved_to.startswith("PKCS#11 token")
            assert sorted(_token_keys(hsm_settings)) == [1, 2]
            assert versions_in_use(archive) == {2: r.patient_keys + r.system_keys}
            later = make_study(tmp_path / "b", n_series=1, per_series=1, patient_id="HSM-ROT-2")[0]
            second = archive.store(later)
            # the old version stays usable until retired; the running one finds version 2 itself
            assert running.read_bytes(running.instances(sop_uid=second.sop_instance_uid)[0]) == \
                later.read_bytes()
            assert running.vault.ring.versions == [1, 2]
        finally:
            running.close()
        with pytest.raises(RotationError):
            retire(archive, 2)
        retire(archive, 1)
        assert sorted(_token_keys(hsm_settings)) == [2]  # destroyed in the token
    finally:
        archive.close()
    again = Archive(hsm_settings)
    try:
        assert again.vault.ring.versions == [2]
        assert again.read_bytes(again.instances(sop_uid=first.sop_instance_uid)[0]) == paths[0].read_bytes()
        assert Letters(again).authenticate(letter.selector, letter.access_code, "192.0.2.30")
    finally:
        again.close()


def test_bad_pkcs11_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="pkcs11_module"):
        load_settings(env={}, master_key="pkcs11:token=a;object=b", pkcs11_pin="1")
    with pytest.raises(ConfigError, match="pkcs11_pin"):
        load_settings(env={}, master_key="pkcs11:token=a;object=b", pkcs11_module="/x.so")
    with pytest.raises(ConfigError, match="slot-id"):
        load_settings(env={}, master_key="pkcs11:slot-id=1;object=b", pkcs11_module="/x.so",
                      pkcs11_pin="1")
    s = load_settings(env={}, master_key="pkcs11:token=a;object=b", pkcs11_module="/x.so",
                      pkcs11_pin="secret-pin-value")
    assert "secret-pin-value" not in repr(s) and "pkcs11:" not in repr(s)


# -- pacs serve with a private token directory ----------------------------------------------------

def _env(tmp_path: Path, conf: Path, pin_file: Path, obj: str, token: str = "pacs-serve") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(SOFTHSM2_CONF=str(conf), PACS_DATA_DIR=str(tmp_path / "data"),
               PACS_MASTER_KEY=softhsm.token_uri(obj, token), PACS_PKCS11_MODULE=softhsm.module(),
               PACS_PKCS11_PIN_FILE=str(pin_file), PACS_DICOM_HOST="127.0.0.1",
               PACS_HTTP_HOST="127.0.0.1", PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_PORT=str(free_port()), PACS_DIMSE_WORKERS="1", PACS_HTTP_WORKERS="1")
    return env


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_wrong_pin_or_a_missing_token_and_changes_nothing(tmp_path):
    conf = softhsm.make_token_dir(tmp_path / "hsm", "pacs-serve")
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.PIN + "\n")
    obj = "master-" + uuid.uuid4().hex[:8]
    env = _env(tmp_path, conf, pin_file, obj)
    name = f"Pinsky^{uuid.uuid4().hex[:6]}"
    for p in make_study(tmp_path / "in", n_series=1, per_series=1, patient_id="HSM-SERVE",
                        patient_name=name):
        subprocess.run([PACS, "import", "-q", str(p)], env=env, check=True, capture_output=True,
                       timeout=120)
    rotated = subprocess.run([PACS, "keys", "rotate"], env=env, capture_output=True, text=True, timeout=120)
    assert rotated.returncode == 0 and "made in the PKCS#11 token 'pacs-serve'" in rotated.stdout
    retired = subprocess.run([PACS, "keys", "retire", "--version", "1"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert retired.returncode == 0 and "[2]" in retired.stdout and "pkcs11" not in retired.stdout
    status = subprocess.run([PACS, "keys", "status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.stdout.strip().splitlines() == [f"version 2: {status.stdout.split()[2]} wrapped key(s) (current)"]
    before = _tree(tmp_path / "data")

    pin_file.write_text("0000-wrong\n")
    run = _serve(env)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    [line] = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert "PIN" in line and "refused" in line and "Nothing was changed" in line
    assert "0000-wrong" not in run.stderr and softhsm.PIN not in run.stderr
    assert _tree(tmp_path / "data") == before

    pin_file.write_text(softhsm.PIN + "\n")
    missing = _env(tmp_path / "fresh", conf, pin_file, obj, token="no-such-token")
    run = _serve(missing)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    [line] = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert "no-such-token" in line and "Nothing was changed" in line
    assert not (tmp_path / "fresh").exists()

    # the right PIN (from the file): the server starts and the study is there
    env = _env(tmp_path, conf, pin_file, obj)
    proc = subprocess.Popen([PACS, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{env['PACS_HTTP_PORT']}/dicom-web/studies?PatientID=HSM-SERVE"
        deadline = time.monotonic() + 60
        body = b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                import urllib.request

                body = urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        assert name.encode() in body
        # a DIMSE worker (a fork of pacs serve: the module initialised again) stores a new patient
        sent = make_study(tmp_path / "dimse", n_series=1, per_series=1, patient_id="HSM-DIMSE")
        store = subprocess.run(["storescu", "-aec", "PACS", "127.0.0.1", env["PACS_DICOM_PORT"],
                                str(sent[0])], capture_output=True, text=True, timeout=60)
        assert store.returncode == 0, store.stderr
        found = urllib.request.urlopen(url.replace("HSM-SERVE", "HSM-DIMSE"), timeout=10).read()
        assert b"HSM-DIMSE" in found
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert softhsm.PIN not in out


def test_the_data_directory_and_index_are_useless_without_the_token(tmp_path):
    """A copy of the data directory (SQLite index, blobs) holds no key and no patient value in clear:
    no key file or environment key opens it, nor a token with the same label but other keys."""
    conf = softhsm.make_token_dir(tmp_path / "hsm", "pacs-serve")
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.PIN)
    obj = "master-" + uuid.uuid4().hex[:8]
    env = _env(tmp_path, conf, pin_file, obj)
    name, pid = f"Copyova^{uuid.uuid4().hex[:6]}", f"HSM-COPY-{uuid.uuid4().hex[:6]}"
    for p in make_study(tmp_path / "in", n_series=1, per_series=2, patient_id=pid, patient_name=name):
        subprocess.run([PACS, "import", "-q", str(p)], env=env, check=True, capture_output=True,
                       timeout=120)
    stolen = tmp_path / "stolen"
    shutil.copytree(tmp_path / "data", stolen)
    for f in stolen.rglob("*"):
        if f.is_file():
            raw = f.read_bytes()
            assert name.encode() not in raw and pid.encode() not in raw, f
    assert not list(stolen.rglob("*.key"))

    settings = load_settings(env={}, data_dir=stolen)  # every wrapped key is the token's
    engine_archive_rows = _wrapped_rows(settings.database_url)
    assert engine_archive_rows and all(len(blob) == 12 + 32 + 16 for _, _, blob in engine_archive_rows)
    names = {n for n, _, _ in engine_archive_rows}
    assert {"blind-index", "letter-hmac"} & names  # the installation's own keys, wrapped too
    with pytest.raises(KeyUnavailable):  # no key file there: a new one is not made beside data
        Archive(settings, create_key=True)
    guess = MasterKeyRing({1: os.urandom(32)})
    for n, v, blob in engine_archive_rows:
        with pytest.raises(KeyUnavailable):
            guess.unwrap(n, WrappedKey(v, blob))

    # a token with the same label and key label, but not the same keys: refused
    other = softhsm.make_token_dir(tmp_path / "other-hsm", "pacs-serve")
    env2 = _env(tmp_path, other, pin_file, obj)
    env2["PACS_DATA_DIR"] = str(stolen)
    elsewhere = make_study(tmp_path / "x", n_series=1, per_series=1, patient_id="HSM-OTHER")[0]
    subprocess.run([PACS, "import", "-q", str(elsewhere)], env={**env2, "PACS_DATA_DIR": str(tmp_path / "x")},
                   check=True, capture_output=True, timeout=120)  # version 1 of obj in the other token
    run = subprocess.run([PACS, "keys", "status"], env=env2, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "wrong key" in run.stderr


def _wrapped_rows(url: str) -> list[tuple[str, int, bytes]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            rows = [(r.name, r.kek_version, r.wrapped) for r in c.execute(select(SystemKey))]
            rows += [(r.key_id, r.kek_version, r.wrapped) for r in c.execute(select(PatientKey))]
    finally:
        engine.dispose()
    return rows


def test_unwrapped_data_keys_are_kept_in_a_bounded_cache(tmp_path):
    """key_cache_size bounds the data keys in memory; an evicted patient is unwrapped again (in the token)."""
    if not os.environ.get("PACS_TEST_SOFTHSM2_CONF"):
        pytest.fail("SoftHSM2 is not installed: run scripts/test, which installs softhsm2")
    settings = load_settings(env={}, data_dir=tmp_path / "data", master_key=softhsm.token_uri(),
                             pkcs11_module=softhsm.module(), pkcs11_pin=softhsm.PIN, key_cache_size=2)
    archive = Archive(settings, create_key=True)
    try:
        stored = [(p, archive.store(p)) for i in range(4)
                  for p in make_study(tmp_path / f"p{i}", n_series=1, per_series=1, patient_id=f"LRU-{i}")]
        assert len(archive.vault._deks) <= 2
        for path, res in stored:
            assert archive.read_bytes(archive.instances(sop_uid=res.sop_instance_uid)[0]) == path.read_bytes()
        assert len(archive.vault._deks) <= 2
    finally:
        archive.close()


def test_a_running_server_follows_a_rotation_made_by_another_process(hsm_settings, tmp_path):
    """`pacs keys rotate` in its own process makes version 2 in the token; a process that opened the
    ring before (a gunicorn or DIMSE worker) reads what is wrapped by it."""
    running = Archive(hsm_settings, create_key=True)
    try:
        first = make_study(tmp_path / "a", n_series=1, per_series=1, patient_id="HSM-X1")[0]
        running.store(first)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env.update(PACS_DATA_DIR=str(hsm_settings.data_dir), PACS_DATABASE_URL=hsm_settings.database_url,
                   PACS_MASTER_KEY=hsm_settings.master_key, PACS_PKCS11_MODULE=hsm_settings.pkcs11_module,
                   PACS_PKCS11_PIN=softhsm.PIN)
        later = make_study(tmp_path / "b", n_series=1, per_series=1, patient_id="HSM-X2")[0]
        for cmd in (["keys", "rotate"], ["import", "-q", str(later)]):
            run = subprocess.run([PACS, *cmd], env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
        # the running process learns version 2 either from the cluster epoch (storage/cluster.py,
        # polled every cluster_poll_interval) or from the token when a key wrapped by it comes
        [info] = running.instances(sop_uid=pydicom_uid(later))
        assert running.read_bytes(info) == later.read_bytes()
        assert running.vault.ring.versions == [1, 2]
    finally:
        running.close()


def pydicom_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
