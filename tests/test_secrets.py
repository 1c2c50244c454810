"""Tests for storage.secrets (security.md "Patient letters")."""

from __future__ import annotations

import base64
import re

import pytest

from storage import secrets as ps

SERVER_SECRET = b"k" * 32


def test_selector_is_urlsafe_random_and_long() -> None:
    sels = {ps.new_selector() for _ in range(200)}
    assert len(sels) == 200
    for sel in sels:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", sel)
        raw = base64.urlsafe_b64decode(sel + "=" * (-len(sel) % 4))
        assert len(raw) * 8 >= 128


def test_selector_never_starts_like_a_command_line_option() -> None:
    # about 1 in 32 random selectors would start with "-" or "_"; 2,000 draws make that ~60
    assert all(ps.new_selector()[0].isalnum() for _ in range(2000))


def test_access_code_format_and_entropy() -> None:
    code = ps.new_access_code()
    assert re.fullmatch(r"([0-9A-HJKMNP-TV-Z]{4}-){4}[0-9A-HJKMNP-TV-Z]{4}", code)
    assert ps.ACCESS_CODE_SYMBOLS * 5 >= 100
    assert len({ps.new_access_code() for _ in range(500)}) == 500


def test_normalize_follows_crockford() -> None:
    assert ps.normalize_access_code("abcd-efgh-jkmn-pqrs-tvwx") == "ABCDEFGHJKMNPQRSTVWX"
    assert ps.normalize_access_code("iIlL oO00 1111 2222 3333") == "11110000111122223333"
    assert ps.normalize_access_code(" 7k3m q9xr-0d2f\thj6t wpb4 ") == "7K3MQ9XR0D2FHJ6TWPB4"


@pytest.mark.parametrize("typed", ["ABCD-EFGH-JKMN-PQRS-TVWU", "ABCD", "ABCD-EFGH-JKMN-PQRS-TVWX-Y", "ÄBCD-EFGH-JKMN-PQRS-TVWX"])
def test_normalize_rejects_bad_codes(typed: str) -> None:
    with pytest.raises(ps.InvalidAccessCode):
        ps.normalize_access_code(typed)


def test_access_code_hash_and_verify() -> None:
    code = ps.new_access_code()
    stored = ps.access_code_hash(SERVER_SECRET, code)
    assert len(stored) == 32
    assert code.encode() not in stored
    # the patient types it sloppily: lower case, spaces, O for 0, L for 1
    sloppy = code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert ps.verify_access_code(SERVER_SECRET, sloppy, stored)
    assert not ps.verify_access_code(b"x" * 32, code, stored)
    other = ps.new_access_code()
    assert other == code or not ps.verify_access_code(SERVER_SECRET, other, stored)
    assert not ps.verify_access_code(SERVER_SECRET, "not a code", stored)


def test_access_code_hash_needs_a_real_secret() -> None:
    with pytest.raises(ValueError, match="server secret"):
        ps.access_code_hash(b"short", ps.new_access_code())


def test_wordlist_is_the_eff_large_list() -> None:
    words = ps.wordlist()
    assert len(words) == 7776 == len(set(words))
    assert words[0] == "abacus" and words[-1] == "zoom"


def test_passcode_words_and_hash() -> None:
    words = set(ps.wordlist())
    p = ps.new_passcode()
    parts = p.split(" ")
    assert len(parts) == 7 and all(w in words for w in parts)
    assert len(ps.new_passcode(8).split(" ")) == 8
    with pytest.raises(ValueError):
        ps.new_passcode(5)
    h = ps.hash_passcode(p)
    assert h.startswith("$argon2id$") and p not in h
    assert ps.verify_passcode(h, p)
    assert not ps.verify_passcode(h, p + " x")
    with pytest.raises(ps.InvalidPasscodeHash):
        ps.verify_passcode("not-a-hash", p)
