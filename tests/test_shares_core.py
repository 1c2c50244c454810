"""storage/whole_record.py, storage/shares.py and storage/access_trail.py on SQLite and PostgreSQL
(migration 0013): sessions holding several letters, shares limited to their letters' scopes,
refusals (410 expired or revoked, 404 unknown, 401 wrong, 429 throttled), the patient's trail."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from dicomweb.patient.auth import status_of
from storage.access_trail import trail, truncate_address
from storage.archive import Scope
from storage.errors import BadInput, NotFound
from storage.index.models import Patient
from storage.letters import LetterInvalid, Letters, Throttled, UnknownLetter, WrongCode
from storage.providers import add_provider
from storage.shares import ShareGone, Shares
from storage.whole_record import add_letter, grant_for, held_letters, passcode_ok
from tests.dicomgen import make_image


def _store(archive, patient_id: str) -> tuple[str, int]:
    buf = io.BytesIO()
    make_image(patient_id=patient_id, study_uid=generate_uid()).save_as(buf, enforce_file_format=True)
    result = archive.store(buf.getvalue())
    return result.study_uid, result.patient_ref


@pytest.fixture
def two(archive) -> dict:
    tag = uuid.uuid4().hex[:8]
    a_study, a_ref = _store(archive, f"A-{tag}")
    a2_study, _ = _store(archive, f"A-{tag}")
    b_study, b_ref = _store(archive, f"B-{tag}")
    c_study, c_ref = _store(archive, f"C-{tag}")
    clinic = add_provider(archive, f"Clinic {tag}")
    with archive.write_sessions.begin() as s:
        s.execute(update(Patient).where(Patient.id == b_ref).values(provider_id=clinic.id))
    letters = Letters(archive)
    far = datetime(2100, 1, 1)
    return {"letters": letters, "clinic": clinic.name, "a": (a_study, a_ref), "a2": a2_study,
            "b": (b_study, b_ref), "c": (c_study, c_ref),
            "la": letters.issue(a_ref, expires_at=far), "lb": letters.issue(b_ref, expires_at=far),
            "lc": letters.issue(c_ref, expires_at=far)}


def test_a_session_holds_letters_of_two_providers(two) -> None:
    letters, la, lb = two["letters"], two["la"], two["lb"]
    token = letters.open_session(letters.authenticate(la.selector, la.access_code, "192.0.2.7"))
    assert [h.selector for h in held_letters(letters, token)] == [la.selector]
    assert grant_for(letters, lb.selector, token) is None  # B is not reachable with A alone
    with pytest.raises(WrongCode):
        add_letter(letters, token, lb.selector, "0000-0000-0000-0000-0000", "192.0.2.7")
    add_letter(letters, token, lb.selector, lb.access_code, "192.0.2.7")
    held = held_letters(letters, token)
    assert [(h.selector, h.provider) for h in held] == [(la.selector, "default"),
                                                        (lb.selector, two["clinic"])]
    assert grant_for(letters, lb.selector, token).patient_ref == two["b"][1]
    assert passcode_ok(letters, held, lb.passcode, "") and passcode_ok(letters, held, la.passcode, "")
    assert not passcode_ok(letters, held, "short one", "short one")
    assert passcode_ok(letters, held, "a passcode I chose myself", "a passcode I chose myself")
    letters.revoke(lb.letter_id)  # a revoked letter drops out of the session it was added to
    assert [h.selector for h in held_letters(letters, token)] == [la.selector]
    with pytest.raises(BadInput):
        add_letter(letters, "no-such-session", lb.selector, lb.access_code, "192.0.2.7")


def test_shares_cover_only_what_the_letters_do(two) -> None:
    letters = two["letters"]
    shares = Shares(letters)
    token = letters.open_session(letters.authenticate(two["la"].selector, two["la"].access_code, "::1"))
    add_letter(letters, token, two["lb"].selector, two["lb"].access_code, "::1")
    held = held_letters(letters, token)
    whole = shares.create(held)
    grant = shares.authenticate(whole.selector, whole.access_code, "198.51.100.9")
    assert set(grant.scopes) == {Scope(two["a"][1], None), Scope(two["b"][1], None)}
    one = shares.create(held, study_uids=[two["a2"]], days=3)
    assert shares.authenticate(one.selector, one.access_code, "x").scopes == (
        Scope(two["a"][1], frozenset([two["a2"]])),)
    with pytest.raises(NotFound):  # another patient's study, or none at all
        shares.create(held, study_uids=[two["c"][0]])
    with pytest.raises(NotFound):
        shares.create(held, study_uids=[generate_uid()])
    with pytest.raises(BadInput):
        shares.create(held, days=0)
    listed = {i.id: i for i in shares.list_for(held)}
    assert listed[whole.share_id].studies is None and listed[one.share_id].studies == 1
    # a session of letter C alone neither lists nor revokes them
    other = letters.open_session(letters.authenticate(two["lc"].selector, two["lc"].access_code, "x"))
    other_held = held_letters(letters, other)
    assert shares.list_for(other_held) == []
    with pytest.raises(NotFound):
        shares.revoke(other_held, whole.share_id)

    bearer, lifetime = shares.open_session(grant)
    assert 0 < lifetime <= 3600 and shares.session(whole.selector, bearer).share_id == whole.share_id
    assert shares.session(one.selector, bearer) is None  # a token opens its own share only
    shares.revoke(held, whole.share_id)
    with pytest.raises(ShareGone) as gone:
        shares.session(None, bearer)
    assert status_of(gone.value) == 410  # the patient door's answer
    with pytest.raises(LetterInvalid):
        shares.authenticate(whole.selector, whole.access_code, "x")
    with pytest.raises(UnknownLetter):
        shares.authenticate("y" * 32, whole.access_code, "x")


def test_expired_and_throttled_shares(two, archive) -> None:
    from storage.index.sharing_models import Share

    letters = two["letters"]
    shares = Shares(letters)
    token = letters.open_session(letters.authenticate(two["la"].selector, two["la"].access_code, "x"))
    share = shares.create(held_letters(letters, token))
    now = datetime.now(UTC).replace(tzinfo=None)
    for _ in range(3):
        with pytest.raises(WrongCode):
            shares.authenticate(share.selector, "0000-0000-0000-0000-0000", "203.0.113.1", now=now)
    with pytest.raises(Throttled) as exc:
        shares.authenticate(share.selector, share.access_code, "203.0.113.1", now=now)
    assert exc.value.retry_after >= 1
    later = now + timedelta(hours=2)
    assert shares.authenticate(share.selector, share.access_code, "203.0.113.1", now=later)
    with archive.write_sessions.begin() as s:
        s.execute(update(Share).where(Share.id == share.share_id).values(expires_at=now))
    with pytest.raises(ShareGone):
        shares.authenticate(share.selector, share.access_code, "203.0.113.1", now=later)


def test_the_patients_trail_names_who_and_cuts_addresses(two, archive) -> None:
    letters = two["letters"]
    token = letters.open_session(letters.authenticate(two["la"].selector, two["la"].access_code,
                                                      "192.0.2.77"))
    share = Shares(letters).create(held_letters(letters, token), origin="2001:db8:1234:5678::9")
    Shares(letters).authenticate(share.selector, share.access_code, "198.51.100.200:4242")
    archive.audit.record("retrieve", actor=f"share:{share.share_id}", source="198.51.100.200",
                         patient_ref=two["a"][1], study_uid=two["a"][0], detail="study")
    archive.audit.record("retrieve", actor="someone", source="192.0.2.1", patient_ref=two["c"][1])
    rows = trail(archive, held_letters(letters, token))
    wheres = {r.where for r in rows}
    assert {"192.0.2.0/24", "198.51.100.0/24", "2001:db8:1234::/48"} <= wheres
    assert not any(w.endswith((".77", ".200")) for w in wheres)
    assert any(r.who == f"share #{share.share_id}" and r.what.startswith("read") for r in rows)
    assert any(r.who.startswith("your letter #") and "from default" in r.who for r in rows)
    assert not any(r.who.startswith("provider") and r.what == "read" for r in rows)  # C's event
    assert truncate_address("[2001:db8::1]:104") == "2001:db8::/48"
    assert truncate_address("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert truncate_address("") == "" and truncate_address("MODALITY1") == "MODALITY1"


def test_a_share_locks_after_the_letters_bound(two) -> None:
    from storage.letters import Locked

    letters = two["letters"]
    shares = Shares(letters)
    token = letters.open_session(letters.authenticate(two["la"].selector, two["la"].access_code, "x"))
    share = shares.create(held_letters(letters, token))
    now = datetime.now(UTC).replace(tzinfo=None)
    bound = letters.archive.settings.letter_max_failures
    for i in range(bound):  # each try after the growing delay has passed (at most an hour)
        with pytest.raises(WrongCode):
            shares.authenticate(share.selector, "0000-0000-0000-0000-0000", f"198.51.100.{i}",
                                now=now + timedelta(hours=2 * i))
    with pytest.raises(Locked) as exc:
        shares.authenticate(share.selector, share.access_code, "192.0.2.1",
                            now=now + timedelta(hours=2 * bound))
    assert status_of(exc.value) == 403


def test_share_codes_and_tokens_are_stored_only_as_hashes(two, archive) -> None:
    from tests.test_secrets_at_rest import _every_value, _forms

    letters = two["letters"]
    shares = Shares(letters)
    token = letters.open_session(letters.authenticate(two["la"].selector, two["la"].access_code, "x"))
    share = shares.create(held_letters(letters, token))
    bearer, _ = shares.open_session(shares.authenticate(share.selector, share.access_code, "x"))
    stored = b"\n".join(_every_value(archive))
    for secret in (share.access_code, share.access_code.replace("-", ""), bearer, token):
        assert not any(form in stored for form in _forms(secret)), "a secret is stored in clear"
