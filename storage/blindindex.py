"""Blind indexes: keyed, truncated tokens of normalised identifying values (searchable encryption).

Names, IDs and descriptions are stored only encrypted (``phi``). To find them without decrypting
every row, and without any per-process cache of decrypted values, each such value also leaves a set
of *tokens* in the level's token table (``patient_tokens``, ``study_tokens``, ``series_tokens``):

    token = HMAC-SHA256(K, keyword | kind | text)[:4]        (32 bits, "lossy", as CipherSweet's)

``K`` is derived with HKDF from the installation's random blind-index key (``system_keys``, wrapped
by the master key), so a token says nothing to whoever lacks the master key, and equal texts of two
installations give unrelated tokens. ``text`` is the value *folded*: upper case, accents and other
compatibility marks removed, one character for one character (:func:`fold`), so tokens are
case- and accent-insensitive. The kinds, and what an attacker holding the whole database (but not
the master key) learns from each — equality of truncated tokens, nothing else:

``eq``   the whole folded value. Learns: which rows hold the same value of that attribute (e.g. two
         patients named ``DOE^JOHN``), hence the frequency distribution of whole values.
``pre``  each prefix (1..8 characters) of each word (words are split at ``^ = , space``). Learns:
         which rows share a word starting with the same 1..8 letters, per attribute, and how many
         do, e.g. that 1 % of patients share one 5-letter start; not the letters themselves.
``tri``  each 3-character substring of the folded value (names and descriptions; not of IDs).
         Learns: which rows share a trigram.
``ph``   the Double Metaphone codes (primary and alternate) of each word of a person name.
         Learns: which rows share a word that sounds alike.

The kind of a token is not stored: a row's tokens are one unordered set per level, so which token
came from which attribute or kind is not written down either (frequency analysis can guess: a
token held by 1/20 of all patients is probably a one-letter prefix). Truncation to 32 bits means
two different texts share a token about once in 4·10⁹ pairs per attribute: an equal token is strong
but not certain evidence of an equal text, and every candidate a token finds is confirmed by
decrypting it (:mod:`storage.query`), so collisions cost a decryption, never a wrong answer. Token
tables record nothing else: no position, no count, no order within a value. Lengths of values are
not stored (a prefix chain of length 8 says only "at least 8 characters").

What queries can narrow (anything else is a scan of the rows the other filters leave, decrypted
without cache): exact values (``eq``); a wildcard's literal start ``SMITH*``, ``SMITH^J*``, and
any word that starts after a separator (``pre``); a literal run of 3+ characters anywhere (``*SON*``,
``tri``); fuzzy person names, word by word (``pre``, and ``ph`` when phonetic fuzzy matching is on).

Hand-written (no library does blind indexes for SQLAlchemy); the phonetic codes come from
``doublemetaphone`` (PyPI, a wrapper around Lawrence Philips' reference C++ implementation, released
2025; chosen over ``metaphone`` (pure Python, last released 2016) and ``jellyfish`` (maintained but
has only the original Metaphone, not Double Metaphone's alternate codes for non-English names)).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .attributes import ATTRIBUTES, Level
from .keys import hkdf
from .matching import WORD_SEPARATORS, Matcher, fold, phonetic_codes

TOKEN_BYTES = 4
PREFIX_MAX = 8
NGRAM = 3
_NARROW_MAX = 3  # tokens ANDed per filter: more only cost index reads
_ENOUGH = 5  # characters of narrowing after which another token reads more than it saves
_SPLIT = re.compile(f"[{re.escape(WORD_SEPARATORS)}]+")

#: The attributes that leave tokens, and so can be searched through the index (their level's table).
INDEXED: tuple[str, ...] = (
    "PatientName", "PatientID", "OtherPatientNames", "OtherPatientIDs",
    "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
    "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription",
    "SeriesDescription", "PerformingPhysicianName", "OperatorsName", "ProtocolName",
    "PerformedProcedureStepDescription",
)
#: Identifiers: whole value and prefixes only (``ACC123*``); a trigram search of an ID scans.
_IDENTIFIERS = frozenset({"PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID"})
_BY_LEVEL: dict[Level, tuple[str, ...]] = {
    lvl: tuple(k for k in INDEXED if ATTRIBUTES[k].level == lvl)
    for lvl in ("PATIENT", "STUDY", "SERIES")}

#: A filter's narrowing: OR over alternatives, each an AND over groups, each an OR over tokens.
#: ``None``: the index cannot narrow this filter.
Narrowing = list[list[frozenset[bytes]]] | None


def indexed(keyword: str) -> bool:
    return keyword in _INDEXED_SET


_INDEXED_SET = frozenset(INDEXED)


def words(folded: str) -> list[str]:
    return [w for w in _SPLIT.split(folded) if w]


@dataclass(frozen=True)
class _Term:
    """One token to look for, with how much it narrows (longer texts are rarer)."""

    kind: str
    text: str

    @property
    def strength(self) -> int:
        return len(self.text)


class _KeyedSHA256:
    """HMAC-SHA256 (RFC 2104) under one fixed key, its padded-key states hashed once.

    The same function as ``hmac.digest(key, msg, "sha256")`` (a test pins it), cheaper when it runs
    ~100 times per stored object: each call copies the two SHA-256 states that already absorbed
    ``key ^ ipad`` and ``key ^ opad`` instead of hashing both pads again (~0.7 us instead of ~1.6).
    """

    _BLOCK = 64  # SHA-256 block size

    def __init__(self, key: bytes):
        if len(key) > self._BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(self._BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class BlindIndex:
    """Computes tokens from the installation's blind-index key; holds nothing per patient."""

    def __init__(self, blind_key: bytes, *, phonetic: bool = False):
        self._key = hkdf(blind_key, b"pacs/blind-index-tokens/v1")
        self._mac = _KeyedSHA256(self._key)
        self.phonetic = phonetic

    def token(self, keyword: str, kind: str, text: str) -> bytes:
        return self._mac.digest(f"{keyword}\x1f{kind}\x1f{text}".encode())[:TOKEN_BYTES]

    # -- ingest ------------------------------------------------------------------------------------

    def tokens(self, level: Level, values: Mapping[str, object]) -> set[bytes]:
        """Every token of a row's indexed values (the row's level; multi-values split at ``\\``)."""
        out: set[bytes] = set()
        for kw in _BY_LEVEL.get(level, ()):
            value = values.get(kw)
            if value in (None, ""):
                continue
            person, ident = ATTRIBUTES[kw].vr == "PN", kw in _IDENTIFIERS
            mac, head = self._mac.digest, f"{kw}\x1f"
            for one in str(value).split("\\"):
                if one.strip():
                    out.update(mac(f"{head}{kind}\x1f{text}".encode())[:TOKEN_BYTES]
                               for kind, text in set(_terms(one, person, trigrams=not ident)))
        return out

    # -- queries -----------------------------------------------------------------------------------

    def narrowing(self, keyword: str, m: Matcher) -> Narrowing:
        """Tokens a stored value must hold to possibly match ``m`` (None: cannot narrow)."""
        if not indexed(keyword):
            return None
        alternatives = self._alternatives(keyword, m)
        if alternatives is None:
            return None
        return [[frozenset(self.token(keyword, t.kind, t.text) for t in group) for group in alt]
                for alt in alternatives]

    def _alternatives(self, keyword: str, m: Matcher) -> list[list[list[_Term]]] | None:
        if m.kind == "any":
            out: list[list[list[_Term]]] = []
            for sub in m.subs:
                alt = self._alternatives(keyword, sub)
                if alt is None:
                    return None  # one value that cannot narrow: no narrowing at all
                out += alt
            return out
        if m.kind in ("single", "list"):
            return [[[_Term("eq", fold(v).strip())]] for v in m.values]
        if m.kind == "wildcard":
            groups = _wildcard_terms(m.values[0], trigrams=keyword not in _IDENTIFIERS)
            return [[[t] for t in groups]] if groups else None
        if m.kind == "fuzzy":
            word_groups: list[list[_Term]] = []
            for w in m.fuzzy_words:
                group = [_Term("pre", w[:PREFIX_MAX])]
                if m.phonetic:
                    group += [_Term("ph", c) for c in phonetic_codes(w)]
                word_groups.append(group)
            word_groups.sort(key=lambda g: -g[0].strength)
            return [word_groups[:_NARROW_MAX]] if word_groups else None
        return None


def _terms(value: str, person: bool, trigrams: bool = True) -> Iterable[tuple[str, str]]:
    f = fold(value)
    yield "eq", f.strip()
    for w in words(f):
        for n in range(1, min(len(w), PREFIX_MAX) + 1):
            yield "pre", w[:n]
        if person:
            for code in phonetic_codes(w):
                yield "ph", code
    for i in range(len(f) - NGRAM + 1 if trigrams else 0):
        yield "tri", f[i:i + NGRAM]


def _wildcard_terms(pattern: str, trigrams: bool = True) -> list[_Term]:
    """Terms every value matching the wildcard ``pattern`` holds (see the module docstring)."""
    f = fold(pattern)
    if "*" not in f and "?" not in f:  # a person name matched without case: the whole value
        return [_Term("eq", f.strip())]
    terms: list[_Term] = []
    for seg in re.finditer(r"[^*?]+", f):
        text, anchored = seg.group(), seg.start() == 0
        # a word starts at the segment's start only when the segment is anchored; later words of a
        # segment start after a separator, in the pattern as in any value it matches
        pieces = list(re.finditer(f"[^{re.escape(WORD_SEPARATORS)}]+", text))
        for p in pieces:
            if p.start() > 0 or anchored:
                terms.append(_Term("pre", p.group()[:PREFIX_MAX]))
        for i in range(len(text) - NGRAM + 1 if trigrams else 0):
            terms.append(_Term("tri", text[i:i + NGRAM]))
    unique = sorted(dict.fromkeys(terms), key=lambda t: (-t.strength, t.kind))
    chosen: list[_Term] = []
    for t in unique:  # the strongest first; more only while what is chosen narrows little
        if len(chosen) >= _NARROW_MAX or sum(c.strength for c in chosen) >= _ENOUGH:
            break
        if not chosen or (t.strength >= 2 and all(c.text != t.text for c in chosen)):
            chosen.append(t)
    return chosen
