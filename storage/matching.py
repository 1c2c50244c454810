"""DICOM attribute matching, PS3.4 C.2.2.2: pure functions over strings, no database.

A query value is compiled once into a :class:`Matcher`; ``Matcher(value)`` tests a stored value.

Person names match case- and accent-insensitively unless configured otherwise: both sides are
*folded* (:func:`fold`: upper case, accents dropped, one character for one, so ``?`` still means one
character), the way the blind indexes (storage/blindindex.py) fold them. Fuzzy matching: every word
of the query starts a word of the name (``jo`` finds ``Doe^John``); with ``phonetic`` a word that
sounds alike (same Double Metaphone code, from the ``doublemetaphone`` package) matches too.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from doublemetaphone import doublemetaphone

from .errors import BadInput

Kind = Literal["universal", "single", "list", "wildcard", "range", "fuzzy", "any"]
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
#: What separates the words of a name (components ^, groups =) for fuzzy matching and the indexes.
WORD_SEPARATORS = "^= ,"
_WORDS = re.compile(r"[\^= ,]+")
_QUERY_WORDS = re.compile(r"[\^= ,*?]+")


@lru_cache(maxsize=8192)
def _fold_char(c: str) -> str:
    d = "".join(x for x in unicodedata.normalize("NFKD", c) if not unicodedata.combining(x))
    if len(d) != 1:
        d = c
    u = d.upper()
    return u if len(u) == 1 else d


def fold(text: str) -> str:
    """Upper case without accents, character for character (``Müller`` -> ``MULLER``, ``ß`` stays)."""
    if text.isascii():
        return text.upper()
    return "".join(map(_fold_char, text))


@lru_cache(maxsize=8192)
def phonetic_codes(word: str) -> tuple[str, ...]:
    """Double Metaphone codes (primary, alternate; empty ones dropped) of one folded word."""
    return tuple(c for c in dict.fromkeys(doublemetaphone(word)) if c)


@dataclass
class Matcher:
    """A compiled matching key for one attribute."""

    kind: Kind
    values: list[str] = field(default_factory=list)
    low: str | None = None
    high: str | None = None
    regex: re.Pattern[str] | None = None
    fuzzy_words: list[str] = field(default_factory=list)
    subs: list[Matcher] = field(default_factory=list)
    folded: bool = False  # wildcard: the regex is folded, and so is the stored value it tests
    phonetic: bool = False  # fuzzy: sounds-alike words match too

    def __call__(self, stored: object) -> bool:
        """Does the stored value (str, list of str, or None) match? Multi-valued: any value matches."""
        if self.kind == "universal":
            return True
        candidates = _as_strings(stored)
        if not candidates:
            return False  # an empty stored value matches only universal matching (C.2.2.2.1)
        return any(self._one(c) for c in candidates)

    def _one(self, s: str) -> bool:
        if self.kind == "single":
            return s == self.values[0]
        if self.kind == "list":
            return s in self.values
        if self.kind == "wildcard":
            return bool(self.regex.fullmatch(fold(s) if self.folded else s))  # type: ignore[union-attr]  # a wildcard has its regex
        if self.kind == "range":
            return (self.low is None or s >= self.low) and (self.high is None or s <= self.high + "~")
        if self.kind == "any":
            return any(m._one(s) for m in self.subs)
        if self.kind == "fuzzy":
            parts = [p for p in _WORDS.split(fold(s)) if p]
            return all(any(p.startswith(w) or (self.phonetic and _sounds_alike(p, w)) for p in parts)
                       for w in self.fuzzy_words)
        return False


def _as_strings(stored: object) -> list[str]:
    if stored is None or stored == "":
        return []
    if isinstance(stored, (list, tuple)):
        return [str(v) for v in stored if v not in (None, "")]
    return [v for v in str(stored).split("\\")] if "\\" in str(stored) else [str(stored)]


def _sounds_alike(part: str, word: str) -> bool:
    return not set(phonetic_codes(part)).isdisjoint(phonetic_codes(word))


def _wildcard_regex(value: str, ignore_case: bool) -> re.Pattern[str]:
    """``*`` and ``?`` as a regex for ``fullmatch``; with ``ignore_case`` the pattern is folded (see
    :func:`fold`). It never backtracks into an earlier ``*``: ``*A*A*...*B`` as ``.*A.*A...B`` took
    time exponential in the stars against a value that does not match (found by fuzzing: 10 stars,
    minutes per stored name, one QIDO query pinned a worker). Each segment between stars is taken
    at its leftmost place in an atomic group: for fixed-length segments the leftmost place is
    always as good as any later one.
    """
    if ignore_case:
        value = fold(value)

    def seg(text: str) -> str:
        return "".join("." if c == "?" else re.escape(c) for c in text)

    head, *rest = re.split(r"\*+", value)
    if not rest:
        pattern = seg(head)
    else:
        *middle, tail = rest
        pattern = seg(head) + "".join(f"(?>.*?{seg(m)})" for m in middle if m) + ".*" + seg(tail)
    return re.compile(pattern, re.DOTALL)


def _check_range_bound(vr: str, bound: str, keyword: str) -> str:
    checks = {"DA": _DATE, "TM": _TIME, "DT": _DT}
    if vr == "DA" and re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", bound):  # ACR-NEMA dates, still seen
        bound = bound.replace(".", "")
    if bound and not checks[vr].match(bound):
        raise BadInput(f"{keyword}: '{bound}' is not a valid {vr} value")
    return bound


def _split_range(vr: str, text: str) -> tuple[str | None, str | None]:
    """Split 'A-B', '-B', 'A-' into bounds; (None, None) when not a range. A DT's UTC offset is no dash."""
    if vr == "DT":
        m = re.fullmatch(r"([^-]*?(?:[+-]\d{4})?)-([^-]*?(?:[+-]\d{4})?)", text)
        if "-" not in text or (m is None):
            return None, None
        if re.fullmatch(r"\d{4,14}(\.\d+)?[+-]\d{4}", text):
            return None, None
        return m.group(1), m.group(2)
    if "-" not in text:
        return None, None
    low, _, high = text.partition("-")
    return low.strip(), high.strip()


def compile_matcher(keyword: str, vr: str, value: object, *, fuzzy: bool = False,
                    pn_ignore_case: bool = True, phonetic: bool = False) -> Matcher:
    """Compile a query value for an attribute of the given VR (C.2.2.2.1-C.2.2.2.5)."""
    if value is None:
        return Matcher("universal")
    if isinstance(value, (list, tuple)):
        value = "\\".join(str(v) for v in value)
    text = str(value)
    if vr not in ("UI",):
        text = text.strip()
    if text == "" or text == "*":
        return Matcher("universal")
    if vr in ("DA", "TM", "DT"):
        if "\\" in text:
            raise BadInput(f"{keyword}: lists are not allowed for {vr} matching")
        low, high = _split_range(vr, text)
        if low is not None or high is not None:
            low = _check_range_bound(vr, low or "", keyword)
            high = _check_range_bound(vr, high or "", keyword)
            if not low and not high:
                raise BadInput(f"{keyword}: a range needs at least one bound")
            return Matcher("range", low=low or None, high=high or None)
        _check_range_bound(vr, text, keyword)
        return Matcher("single", [text])
    if vr == "UI":
        uids = [u.strip() for u in text.split("\\") if u.strip()]
        if not uids:  # only separators ("\\"): empty values, universal matching (found by fuzzing)
            return Matcher("universal")
        for u in uids:
            if not re.fullmatch(r"[0-9.]{1,64}", u):
                raise BadInput(f"{keyword}: '{u[:70]}' is not a UID")
        return Matcher("list", uids) if len(uids) > 1 else Matcher("single", uids)
    if vr == "PN" and fuzzy:
        words = [w for w in _QUERY_WORDS.split(fold(text)) if w]
        return (Matcher("fuzzy", fuzzy_words=words, phonetic=phonetic) if words
                else Matcher("universal"))
    if "\\" in text:  # C.2.2.2.8 multiple value matching: any of the values
        subs = [_single_or_wildcard(v, vr, pn_ignore_case) for v in text.split("\\")]
        return Matcher("any", subs=subs)
    return _single_or_wildcard(text, vr, pn_ignore_case)


def _single_or_wildcard(text: str, vr: str, pn_ignore_case: bool) -> Matcher:
    ignore_case = vr == "PN" and pn_ignore_case
    if "*" in text or "?" in text or ignore_case:
        return Matcher("wildcard", [text], regex=_wildcard_regex(text, ignore_case),
                       folded=ignore_case)
    return Matcher("single", [text])
