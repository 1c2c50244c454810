"""DICOM JSON (PS3.18 Annex F) from the query engine's ``{keyword: value}`` records.

QIDO-RS answers are built here directly, without pydicom datasets: each keyword's tag and VR are
looked up once and cached, values are converted by VR (F.2.3): PN -> ``{"Alphabetic": ...}``
(with ``Ideographic``/``Phonetic`` groups after ``=``), IS/SS/US/... -> integers, DS/FL/FD ->
numbers, multi-valued strings split on backslash. An attribute without a value is ``{"vr": VR}``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

_INT_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
_SINGLE_VALUED_VRS = frozenset({"LT", "ST", "UT", "UR"})  # backslash is a character here
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


@functools.lru_cache(maxsize=4096)
def tag_and_vr(keyword: str) -> tuple[str, str] | None:
    """``("0020000D", "UI")`` for a keyword, or None if it is not a DICOM keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    vr = dictionary_VR(tag)
    if " or " in vr:  # US or SS, OB or OW ...: the first is what the index holds
        vr = vr.split(" or ")[0]
    return f"{tag:08X}", vr


@functools.lru_cache(maxsize=4096)
def keyword_of(key: str) -> str | None:
    """A query key as a keyword: a keyword itself or an 8-hex-digit tag (PS3.18 8.3.4.1)."""
    if _HEX_TAG.match(key):
        try:
            kw = keyword_for_tag(int(key, 16))
        except ValueError:
            return None
        return kw or None
    return key if tag_for_keyword(key) is not None else None


def _number(text: str, vr: str) -> int | float | str:
    text = text.strip()
    try:
        if vr in _INT_VRS:
            return int(text)
        f = float(text)
        return int(f) if f.is_integer() and re.fullmatch(r"[+-]?\d+", text) else f
    except ValueError:
        return text  # a malformed stored value is passed on rather than dropped


def _pn(text: str) -> dict[str, str]:
    groups = text.split("=")
    return {name: g for name, g in zip(_PN_GROUPS, groups, strict=False) if g}


def element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute object (F.2.2) for a stored value."""
    return converter(vr)(value)


@functools.lru_cache(maxsize=64)
def converter(vr: str) -> Callable[[Any], dict[str, Any]]:
    """A fast value -> DICOM JSON attribute function for one VR (the common single value first)."""
    empty = {"vr": vr}

    def generic(value: Any) -> dict[str, Any]:
        if value is None or value == "":
            return dict(empty)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"vr": vr, "Value": [value]}
        text = str(value)
        parts = [text] if vr in _SINGLE_VALUED_VRS else text.split("\\")
        if vr == "PN":
            return {"vr": vr, "Value": [_pn(p) if p else {} for p in parts]}
        if vr in _INT_VRS or vr in _FLOAT_VRS:
            return {"vr": vr, "Value": [_number(p, vr) if p else None for p in parts]}
        return {"vr": vr, "Value": [p if p else None for p in parts]}

    if vr == "PN":
        def pn(value: Any) -> dict[str, Any]:
            if isinstance(value, str) and value and "=" not in value and "\\" not in value:
                return {"vr": "PN", "Value": [{"Alphabetic": value}]}
            return generic(value)
        return pn
    if vr in _INT_VRS or vr in _FLOAT_VRS:
        return generic

    def text(value: Any) -> dict[str, Any]:
        if isinstance(value, str) and value and "\\" not in value:
            return {"vr": vr, "Value": [value]}
        return generic(value)
    return text


def plan(keywords: Iterable[str]) -> list[tuple[str, str, Callable[[Any], dict[str, Any]]]]:
    """(tag, keyword, converter) for each DICOM keyword, in tag order, computed once per request."""
    out = []
    for kw in dict.fromkeys(keywords):
        tv = tag_and_vr(kw)
        if tv is not None:
            out.append((tv[0], kw, converter(tv[1])))
    out.sort(key=lambda item: item[0])
    return out


def to_json(record: Mapping[str, Any], keywords: Iterable[str]) -> dict[str, Any]:
    """The DICOM JSON object of a record, with ``keywords`` in tag order (unknown ones skipped)."""
    return {tag: conv(record.get(kw)) for tag, kw, conv in plan(keywords)}
