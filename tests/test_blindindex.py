"""Blind indexes (storage/blindindex.py): keyed tokens, no cache, re-indexing, new patients at ingest.

On SQLite and PostgreSQL (the ``archive`` fixture), and over DIMSE from four associations at once.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import subprocess
import threading

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import delete, func, select, update

from storage.archive import Archive
from storage.blindindex import TOKEN_BYTES, BlindIndex, _KeyedSHA256, _terms
from storage.config import load_settings
from storage.index.models import Patient, PatientKey, PatientToken, ReindexState, StudyToken
from storage.query import Query
from storage.reindex import reindex
from tests.conftest import pacs_command, require, start_server
from tests.dicomgen import make_image, write


def part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _names(archive: Archive, **filters) -> list[str]:
    fuzzy = bool(filters.pop("fuzzy", False))
    return sorted(r["PatientName"] for r in archive.find(Query("PATIENT", filters=filters, fuzzy=fuzzy,
                                                                return_keys=["PatientName"])))


def _store(archive: Archive, pid: str, name: str, **kw) -> None:
    archive.store(part10(make_image(patient_id=pid, patient_name=name, study_uid=generate_uid(),
                                    charset="ISO_IR 192", **kw)))


def test_no_token_is_an_unkeyed_hash_of_the_name(archive: Archive, tmp_path):
    """Every token is an HMAC under the installation's key: none equals a plain hash of any text it
    was made from, and another installation gets other tokens for the same name."""
    name = "Quixotic^Bartholomew"
    _store(archive, "BI-1", name, accession="BI-ACC", study_description="Blind Study")
    with archive.sessions() as s:
        pid = archive.find_patient("BI-1")
        tokens = set(s.scalars(select(PatientToken.token).where(PatientToken.patient_id == pid)).all())
        study_tokens = set(s.scalars(select(StudyToken.token)).all())
    assert tokens and study_tokens
    assert all(len(t) == TOKEN_BYTES for t in tokens | study_tokens)
    texts = {text for _, text in _terms(name, True)} | {name, name.upper(), "BI-1", "BI-ACC"}
    for _, text in _terms(name, True):
        texts.add(f"PatientName\x1fpre\x1f{text}")
    unkeyed = set()
    for text in texts:
        for algo in ("md5", "sha1", "sha256", "sha512", "blake2b", "sha3_256"):
            digest = hashlib.new(algo, text.encode()).digest()
            unkeyed |= {digest[:TOKEN_BYTES], digest[-TOKEN_BYTES:]}
    assert not (tokens | study_tokens) & unkeyed
    # the key matters: a second installation (own blind-index key) tokenises the same name otherwise
    other = Archive(load_settings(env={}, data_dir=tmp_path / "other",
                                  database_url=f"sqlite:///{tmp_path / 'other.sqlite'}"),
                    create_key=True)
    try:
        _store(other, "BI-1", name)
        with other.sessions() as s:
            theirs = set(s.scalars(select(PatientToken.token)).all())
        assert len(theirs) == len(tokens) and not theirs & tokens
    finally:
        other.close()


def test_tokens_are_hmac_sha256_of_the_derived_key():
    """The precomputed-state HMAC is RFC 2104 HMAC-SHA256: the same bytes as the standard library's,
    for keys shorter than, equal to and longer than the block, and messages of any length."""
    for key in (b"k" * 32, bytes(range(64)), b"x" * 100, b""):
        mac = _KeyedSHA256(key)
        for msg in (b"", b"PatientName\x1fpre\x1fSMI", "Ünïcode^Näme".encode() * 40):
            assert mac.digest(msg) == hmac.digest(key, msg, "sha256")
    index = BlindIndex(b"b" * 32)
    expected = hmac.digest(index._key, b"PatientName\x1feq\x1fDOE^JANE", "sha256")[:TOKEN_BYTES]
    assert index.token("PatientName", "eq", "DOE^JANE") == expected
    assert expected in index.tokens("PATIENT", {"PatientName": "Doe^Jane"})


def test_matching_through_the_index(archive: Archive):
    for pid, name in [("BM-1", "Smith^John"), ("BM-2", "Smithson^Anna"), ("BM-3", "Smythe^Jon"),
                      ("BM-4", "Müller^Jürgen"), ("BM-5", "Johnson^Mary"), ("BM-6", "Doe^Jane")]:
        _store(archive, pid, name)
    assert _names(archive, PatientName="SMITH*") == ["Smith^John", "Smithson^Anna"]
    assert _names(archive, PatientName="smith^j*") == ["Smith^John"]
    assert _names(archive, PatientName="*SON*") == ["Johnson^Mary", "Smithson^Anna"]
    assert _names(archive, PatientName="*^J?N") == ["Smythe^Jon"]
    assert _names(archive, PatientName="MULLER*") == ["Müller^Jürgen"]  # accents folded
    assert _names(archive, PatientName="müller^jürgen") == ["Müller^Jürgen"]
    assert _names(archive, PatientName="*S*") == ["Johnson^Mary", "Smith^John", "Smithson^Anna",
                                                  "Smythe^Jon"]  # no token narrows: a scan
    assert _names(archive, PatientName="doe", fuzzy=True) == ["Doe^Jane"]
    assert _names(archive, PatientName="jo", fuzzy=True) == ["Johnson^Mary", "Smith^John", "Smythe^Jon"]
    assert _names(archive, PatientName="Nobody*") == []
    assert _names(archive, PatientID="BM-?") == sorted(["Smith^John", "Smithson^Anna", "Smythe^Jon",
                                                        "Müller^Jürgen", "Johnson^Mary", "Doe^Jane"])


def test_phonetic_fuzzy_matching(tmp_path):
    settings = load_settings(env={}, data_dir=tmp_path / "data", phonetic_fuzzy_matching=True)
    archive = Archive(settings, create_key=True)
    try:
        for pid, name in [("PH-1", "Smith^John"), ("PH-2", "Smythe^Jon"), ("PH-3", "Doe^Mary")]:
            _store(archive, pid, name)
        assert _names(archive, PatientName="jon", fuzzy=True) == ["Smith^John", "Smythe^Jon"]
        assert _names(archive, PatientName="smith", fuzzy=True) == ["Smith^John", "Smythe^Jon"]
        assert _names(archive, PatientName="smith^jon") == []  # not fuzzy: not phonetic
    finally:
        archive.close()


def test_shredded_while_searching_is_skipped(archive: Archive):
    for pid, name in [("SH-1", "Shred^Anna"), ("SH-2", "Shred^Bert"), ("SH-3", "Shred^Carl")]:
        _store(archive, pid, name)
    victim = archive.find_patient("SH-2")
    with archive.write_sessions.begin() as s:  # the first step of a shred, as another node runs it
        key_id = s.get(Patient, victim).key_id
        s.execute(update(PatientKey).where(PatientKey.key_id == key_id).values(wrapped=b""))
    archive.vault.forget(key_id)
    assert _names(archive, PatientName="SHRED*") == ["Shred^Anna", "Shred^Carl"]
    found = list(archive.find(Query("STUDY", filters={"PatientName": "shred*"},
                                    return_keys=["PatientName", "StudyDescription"])))
    assert sorted(r["PatientName"] for r in found) == ["Shred^Anna", "Shred^Carl"]


def test_reindex_of_an_archive_without_tokens_resumes(archive: Archive):
    names = [f"Reindex^Person{i}" for i in range(7)]
    for i, name in enumerate(names):
        _store(archive, f"RX-{i}", name, study_description=f"Knee {i}")
    with archive.sessions() as s:
        before = sorted(s.execute(select(PatientToken.token, PatientToken.patient_id)).all())
    with archive.write_sessions.begin() as s:  # as migration 0006 leaves an archive of before
        s.execute(delete(PatientToken))
        s.execute(delete(StudyToken))
        s.execute(update(ReindexState).values(done=False, last_id=0))
    fresh = Archive(archive.settings)
    try:
        assert _names(fresh, PatientName="REINDEX*") == names  # a scan until re-indexed
        calls = []

        def interrupt(level: str, done: int, total: int) -> None:
            calls.append((level, done, total))
            if len(calls) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            reindex(fresh, batch=3, progress=interrupt)
        with fresh.sessions() as s:
            state = s.get(ReindexState, "PATIENT")
            assert (state.done, state.last_id > 0) == (False, True)
        counts = reindex(fresh, batch=3)
        assert counts["PATIENT"] < 7 + 1 and counts["STUDY"] == 7  # resumed: not all patients again
        with fresh.sessions() as s:
            after = sorted(s.execute(select(PatientToken.token, PatientToken.patient_id)).all())
            assert s.scalar(select(func.count()).select_from(ReindexState)
                            .where(ReindexState.done.is_(False))) == 0
        assert after == before
        assert _names(fresh, PatientName="REINDEX^PERSON3") == ["Reindex^Person3"]
        assert fresh.queries.index_ready(fresh.engine.connect())
    finally:
        fresh.close()


def test_two_processes_create_one_new_patient(archive: Archive):
    """Two archives (as two SCP workers) store first objects of one new patient at once: one patient
    row, one key, and every object readable under it (a loser's blob is re-encrypted)."""
    other = Archive(archive.settings)
    pid = f"NP-{generate_uid()[-12:]}"
    sent: dict[str, bytes] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work(a: Archive, n: int) -> None:
        try:
            data = [part10(make_image(patient_id=pid, patient_name="New^Patient", study_uid=generate_uid(),
                                      pixel_seed=n * 10 + i, rows=8 if i % 2 else 200,
                                      columns=8 if i % 2 else 200)) for i in range(3)]
            barrier.wait(30)
            for blob in data:
                r = a.store(blob)
                sent[r.sop_instance_uid] = blob
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(a, n)) for n, a in enumerate([archive, other] * 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        other.close()
    assert errors == []
    ref = archive.find_patient(pid)
    with archive.sessions() as s:
        key_id = s.get(Patient, ref).key_id
        assert s.scalar(select(func.count()).select_from(Patient)
                        .where(Patient.id_hash == archive.vault.blind("pid", pid))) == 1
        used = s.scalar(select(func.count()).select_from(PatientKey))
        patients = s.scalar(select(func.count()).select_from(Patient))
    assert used == patients  # no key left over from a lost race
    infos = [i for i in archive.instances() if i.patient_ref == ref]
    assert len(infos) == 18 and {i.key_id for i in infos} == {key_id}
    assert {i.sop_uid: archive.read_bytes(i) for i in infos} == sent


def test_same_new_patient_from_four_associations(tmp_path):
    """dcmtk storescu from four associations at once (two SCP processes), each bringing studies of
    one patient the archive has never seen: one patient row, one key, everything stored."""
    require("storescu")
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_DIMSE_WORKERS="2")
    try:
        pid = f"FOUR-{generate_uid()[-10:]}"
        folders = []
        for n in range(4):
            folder = tmp_path / f"in{n}"
            for i in range(3):
                write(make_image(patient_id=pid, patient_name="Four^Associations",
                                 study_uid=generate_uid(), pixel_seed=n * 10 + i, rows=8, columns=8),
                      folder)
            folders.append(folder)
        procs = [subprocess.Popen(["storescu", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                                   "+sd", str(f)], env={"TCP_NODELAY": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for f in folders]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        archive = srv.archive()
        try:
            with archive.sessions() as s:
                rows = s.execute(select(Patient.id, Patient.key_id)
                                 .where(Patient.id_hash == archive.vault.blind("pid", pid))).all()
                keys = s.scalar(select(func.count()).select_from(PatientKey))
            assert len(rows) == 1 and keys == 1
            infos = [i for i in archive.instances() if i.patient_ref == rows[0][0]]
            assert len(infos) == 12
            assert all(archive.read_bytes(i)[128:132] == b"DICM" for i in infos)
            found = list(archive.find(Query("STUDY", filters={"PatientName": "four*"},
                                            return_keys=["PatientID"])))
            assert len(found) == 12 and {r["PatientID"] for r in found} == {pid}
        finally:
            archive.close()
    finally:
        srv.stop()


def test_migration_of_an_archive_from_before_the_tokens(archive: Archive):
    """Down one revision (no token tables), up again: the archive is marked for `pacs reindex`,
    searches stay right meanwhile, and after it they go through the tokens."""
    from alembic import command
    from alembic.config import Config

    from storage.index.db import MIGRATIONS

    _store(archive, "MG-1", "Migrate^Me")
    archive.close()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with archive.write_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006-1")  # to before the token tables (and whatever follows)
    again = Archive(archive.settings)
    try:
        with again.engine.connect() as c:
            assert not again.queries.index_ready(c)
        assert _names(again, PatientName="MIGRATE*") == ["Migrate^Me"]
        reindex(again)
        with again.engine.connect() as c:
            assert again.queries.index_ready(c)
            assert c.execute(select(func.count()).select_from(PatientToken.__table__)).scalar() > 0
        assert _names(again, PatientName="MIGRATE*") == ["Migrate^Me"]
    finally:
        again.close()


def test_pacs_reindex_command(tmp_path):
    """`pacs reindex` on a data directory: resumable state, done, and --restart indexes all again."""
    data = tmp_path / "data"
    archive = Archive(load_settings(env={}, data_dir=data), create_key=True)
    try:
        _store(archive, "CLI-1", "Command^Line")
        with archive.write_sessions.begin() as s:
            s.execute(delete(PatientToken))
            s.execute(update(ReindexState).values(done=False, last_id=0))
    finally:
        archive.close()
    proc = pacs_command(data, "reindex", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "indexed 1 patient row(s), 1 study row(s), 1 series row(s)" in proc.stdout
    again = pacs_command(data, "reindex", "--quiet")
    assert "indexed 0 patient row(s)" in again.stdout  # nothing left to do
    restart = pacs_command(data, "reindex", "--restart", "--quiet")
    assert "indexed 1 patient row(s)" in restart.stdout
    archive = Archive(load_settings(env={}, data_dir=data))
    try:
        assert _names(archive, PatientName="COMMAND*") == ["Command^Line"]
        with archive.engine.connect() as c:
            assert archive.queries.index_ready(c)
    finally:
        archive.close()


def test_process_memory_is_bounded_and_searches_read_keys_with_rows(settings, monkeypatch):
    """With room for 3 data keys, 12 patients are stored and found: keys evicted from the LRU are
    unwrapped from the rows the search reads (no query per match), and nothing else accumulates."""
    import storage.vault

    monkeypatch.setattr(storage.vault, "_KEYS_MAX", 3)
    archive = Archive(settings, create_key=True)
    try:
        for i in range(12):
            _store(archive, f"LRU-{i}", f"Bounded^Person{i:02d}")
        archive.vault._read = None  # a per-match key lookup would fail now: keys come with rows
        assert _names(archive, PatientName="BOUNDED*") == [f"Bounded^Person{i:02d}" for i in range(12)]
        assert len(archive.vault._deks) <= 3 and len(archive.vault._field_keys) <= 3
        assert not any(type(v) is dict for v in vars(archive.vault).values())  # no unbounded map
    finally:
        archive.close()
