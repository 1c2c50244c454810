"""Patient letter secrets: selector, access code, export passcode (security.md "Patient letters").

* The selector goes into the letter's URL: random, URL-safe, no patient data.
* The access code is typed by the patient (or sent in an ``Authorization`` header, never in a
  URL). It is 100 random bits written in Crockford base32 (https://www.crockford.com/base32.html),
  grouped by four. The server keeps only HMAC-SHA256(server secret, normalized code) (RFC 2104)
  and compares in constant time.
* The export passcode is seven words from the EFF large wordlist (7776 words, 12.9 bits each,
  90 bits in all). Only its Argon2id hash (RFC 9106) is kept, to check a typed passcode.

The wordlist ``storage/eff_large_wordlist.txt`` is the Electronic Frontier Foundation's
``eff_large_wordlist.txt`` (https://www.eff.org/dice, CC BY 3.0 US), byte-identical, taken from
the copy shipped in the ``diceware`` 1.0.1 wheel on PyPI (``diceware/wordlists/wordlist_en_eff.txt``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "ACCESS_CODE_SYMBOLS",
    "InvalidAccessCode",
    "InvalidPasscodeHash",
    "access_code_hash",
    "hash_passcode",
    "new_access_code",
    "new_passcode",
    "new_selector",
    "normalize_access_code",
    "verify_access_code",
    "verify_passcode",
    "wordlist",
]

CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford base32 encoding symbols (no I, L, O, U)."""

ACCESS_CODE_SYMBOLS = 20
"""Symbols in an access code: 20 x 5 bits = 100 bits."""

_GROUP = 4
_SELECTOR_BYTES = 24  # 192 bits
_MIN_SERVER_SECRET = 16
_WORDLIST_PATH = Path(__file__).with_name("eff_large_wordlist.txt")
_WORDLIST_SIZE = 7776

# Crockford decoding: case-insensitive, I and L read as 1, O as 0; hyphens are ignored.
_DECODE = {c: c for c in CROCKFORD_ALPHABET}
_DECODE.update({c.lower(): c for c in CROCKFORD_ALPHABET})
_DECODE.update({"I": "1", "i": "1", "L": "1", "l": "1", "O": "0", "o": "0"})
_IGNORED = set("- \t\r\n\u00a0")

_hasher = PasswordHasher()  # argon2-cffi defaults: Argon2id, RFC 9106 low-memory profile


class InvalidAccessCode(ValueError):
    """A typed access code is not a well-formed Crockford base32 access code."""


class InvalidPasscodeHash(ValueError):
    """A stored passcode hash is not a valid Argon2 hash string."""


def new_selector() -> str:
    """Return a random URL-safe selector (192 bits) for the letter's URL.

    Never one starting with ``-`` or ``_``: typed after ``pacs letter revoke`` a leading dash reads
    as an option (an older selector that has one is given after ``--``).
    """
    while True:
        selector = secrets.token_urlsafe(_SELECTOR_BYTES)
        if selector[0].isalnum():
            return selector


def new_access_code() -> str:
    """Return a new 100-bit access code, e.g. ``7K3M-Q9XR-0D2F-HJ6T-WPB4``."""
    symbols = "".join(secrets.choice(CROCKFORD_ALPHABET) for _ in range(ACCESS_CODE_SYMBOLS))
    return "-".join(symbols[i : i + _GROUP] for i in range(0, len(symbols), _GROUP))


def normalize_access_code(typed: str) -> str:
    """Return the canonical 20-symbol form of a typed access code.

    Follows Crockford's decoding rules: upper and lower case are equal, ``I``/``L`` read as
    ``1`` and ``O`` as ``0``; hyphens (and, for typing comfort, whitespace) are ignored.

    Raises:
        InvalidAccessCode: a symbol outside the alphabet (e.g. ``U``) or a wrong length.
    """
    out: list[str] = []
    for ch in typed:
        if ch in _IGNORED:
            continue
        sym = _DECODE.get(ch)
        if sym is None:
            raise InvalidAccessCode("access code contains a character that is not allowed")
        out.append(sym)
    if len(out) != ACCESS_CODE_SYMBOLS:
        raise InvalidAccessCode(
            f"access code must have {ACCESS_CODE_SYMBOLS} symbols, got {len(out)}"
        )
    return "".join(out)


def _check_secret(server_secret: bytes) -> None:
    if not isinstance(server_secret, bytes | bytearray) or len(server_secret) < _MIN_SERVER_SECRET:
        raise ValueError(f"server secret must be at least {_MIN_SERVER_SECRET} bytes")


def access_code_hash(server_secret: bytes, code: str) -> bytes:
    """Return HMAC-SHA256(server_secret, normalized code) (RFC 2104), the value to store.

    Raises:
        InvalidAccessCode: the code is malformed.
        ValueError: the server secret is shorter than 16 bytes.
    """
    _check_secret(server_secret)
    normalized = normalize_access_code(code)
    return hmac.new(bytes(server_secret), normalized.encode("ascii"), hashlib.sha256).digest()


def verify_access_code(server_secret: bytes, code: str, stored_hash: bytes) -> bool:
    """Return whether a typed ``code`` matches ``stored_hash``, comparing in constant time.

    A malformed code is simply wrong (``False``); the HMAC is still computed so the answer
    takes about as long either way.
    """
    _check_secret(server_secret)
    try:
        candidate = access_code_hash(server_secret, code)
    except InvalidAccessCode:
        candidate = hmac.new(bytes(server_secret), b"\x00" * 20, hashlib.sha256).digest()
        hmac.compare_digest(candidate, stored_hash)
        return False
    return hmac.compare_digest(candidate, stored_hash)


@lru_cache(maxsize=1)
def wordlist() -> tuple[str, ...]:
    """Return the 7776 words of the EFF large wordlist, in dice order."""
    words: list[str] = []
    for line in _WORDLIST_PATH.read_text(encoding="ascii").splitlines():
        if line.strip():
            words.append(line.split("\t", 1)[1].strip())
    if len(words) != _WORDLIST_SIZE or len(set(words)) != _WORDLIST_SIZE:
        raise RuntimeError("storage/eff_large_wordlist.txt is damaged")
    return tuple(words)


def new_passcode(words: int = 7) -> str:
    """Return ``words`` random words from the EFF large wordlist, space separated.

    Seven words give 90 bits. Fewer than six words are refused (security.md).
    """
    if words < 6:
        raise ValueError("a passcode needs at least 6 words")
    wl = wordlist()
    return " ".join(secrets.choice(wl) for _ in range(words))


def hash_passcode(passcode: str) -> str:
    """Return the Argon2id hash string (PHC format) of ``passcode``."""
    if not passcode:
        raise ValueError("passcode must not be empty")
    return _hasher.hash(passcode)


def verify_passcode(stored_hash: str, passcode: str) -> bool:
    """Return whether ``passcode`` matches the Argon2id ``stored_hash``.

    Raises:
        InvalidPasscodeHash: ``stored_hash`` is not an Argon2 hash.
    """
    try:
        return _hasher.verify(stored_hash, passcode)
    except VerifyMismatchError:
        return False
    except InvalidHashError as exc:
        raise InvalidPasscodeHash("stored passcode hash is not a valid Argon2 hash") from exc
    except VerificationError:
        return False
