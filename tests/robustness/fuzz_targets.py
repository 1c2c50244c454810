"""Coverage-guided fuzz targets (atheris, libFuzzer) for the parsers that take input off the network.

Run one: ``python -m tests.robustness.fuzz_targets NAME [libFuzzer flags] [corpus dirs]``, e.g.
``-max_total_time=3 /tmp/new tests/robustness/corpus/NAME``. Each target lets through only the
errors its callers map to a clear refusal (4xx, a DIMSE failure status); anything else is a crash.

* ``multipart``: the STOW-RS ``multipart/related`` reader (dicomweb/multipart.py);
* ``dicom_json``: a STOW-RS ``application/dicom+json`` item made into a dataset (dicomweb/stow.py);
* ``qido``: QIDO-RS query parameters and the matching keys compiled from them (dicomweb/qido.py,
  storage/matching.py);
* ``cfind``: a C-FIND identifier made into a query and its matchers (pacs/find.py);
* ``mediatypes``: Accept and Content-Type parsing and negotiation (dicomweb/mediatypes.py);
* ``header``: the Part 10 header reader the ingest path indexes from (storage/header.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable

import atheris
import flask  # noqa: F401 - libraries load uninstrumented: coverage is of our own code
import pydicom
import pynetdicom  # noqa: F401
import sqlalchemy  # noqa: F401
from pydicom.dataset import Dataset

with atheris.instrument_imports(include=["dicomweb", "storage", "pacs"]):
    from dicomweb import mediatypes, multipart, qido
    from dicomweb import stow as stow_module
    from pacs import find
    from storage import header, matching
    from storage.attributes import ATTRIBUTES
    from storage.errors import ArchiveError, BadInput

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
_KEYWORDS = sorted(ATTRIBUTES)
_SAMPLES = ["", "DOE^JANE", "20240115", "101500", "1.2.3", "CT", "ACC*", "x" * 70]


def fuzz_multipart(data: bytes) -> None:
    """First line: the Content-Type header; the rest: the body."""
    head, _, body = data.partition(b"\n")
    ctype = head.decode("latin-1")
    try:
        for part in multipart.decode(io.BytesIO(body), ctype, max_part_size=1 << 16, max_total=1 << 20):
            _ = (part.media_type, part.transfer_syntax, part.content_location)
            part.read()
            part.close()
    except (multipart.MultipartError, mediatypes.UnsupportedMediaType):
        pass


def fuzz_dicom_json(data: bytes) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    items = doc if isinstance(doc, list) else [doc]
    for item in items:
        if not isinstance(item, dict):
            continue
        # what stow.py does outside its per-item try must not raise
        for tag in ("00080016", "00080018", "0020000D"):
            stow_module._value(item, tag)
        refs = stow_module._bulk_refs(item)
        try:  # inside the per-item try: any failure refuses this item alone (a FailedSOP)
            ds = stow_module._from_json(item, refs, {}, None)
            ds.save_as(io.BytesIO(), enforce_file_format=True)
        except Exception:  # noqa: BLE001, S110 - the caller's contract: this item fails alone
            pass


def fuzz_qido(data: bytes) -> None:
    """First byte: the level; the rest: a query string (as werkzeug gets it)."""
    from urllib.parse import parse_qsl

    if not data:
        return
    level = ("STUDY", "SERIES", "IMAGE")[data[0] % 3]
    args: dict[str, list[str]] = {}
    for key, value in parse_qsl(data[1:].decode("utf-8", "replace"), keep_blank_values=True):
        args.setdefault(key, []).append(value)
    try:
        q, _, _ = qido.parse_query(level, args, {})
        _compile(q.filters, q.fuzzy)
    except BadInput:
        pass


def fuzz_cfind(data: bytes) -> None:
    """Lines ``Keyword=value`` make the identifier (what pydicom would decode from the wire)."""
    identifier = Dataset()
    for line in data.decode("utf-8", "replace").splitlines()[:20]:
        kw, _, value = line.partition("=")
        if kw != "QueryRetrieveLevel" and kw not in ATTRIBUTES:
            continue
        try:
            setattr(identifier, kw, value)
        except (ValueError, TypeError, OverflowError):
            continue  # pydicom refuses the value for the VR: it never reaches the handler
    try:
        level = find.parse_level(identifier, "1.2.840.10008.5.1.4.1.2.1.1", study_root_models=())
        q = find.identifier_to_query(identifier, level)
        _compile(q.filters, False)
    except (find.IdentifierError, BadInput):
        pass


def _compile(filters: dict[str, str], fuzzy: bool) -> None:
    for kw, value in filters.items():
        attr = ATTRIBUTES.get(kw)
        if attr is None:
            continue
        m = matching.compile_matcher(kw, attr.vr, value, fuzzy=fuzzy)
        for sample in _SAMPLES:
            m(sample)


_OFFERS = [mediatypes.instance_offers(), mediatypes.instance_offers("1.2.840.10008.1.2.4.50"),
           mediatypes.frame_offers("1.2.840.10008.1.2.1"), mediatypes.frame_offers("1.2.840.10008.1.2.4.90"),
           mediatypes.metadata_offers(), mediatypes.rendered_offers()]


def fuzz_mediatypes(data: bytes) -> None:
    """The text as a Content-Type and as an Accept header against each resource's offers."""
    text = data.decode("latin-1")
    with contextlib.suppress(mediatypes.UnsupportedMediaType):
        mediatypes.parse_content_type(text)
    for offers in _OFFERS:
        for lenient in (True, False):
            with contextlib.suppress(mediatypes.NotAcceptable):
                mediatypes.negotiate(text, offers, lenient=lenient)


def fuzz_header(data: bytes) -> None:
    with contextlib.suppress(ArchiveError):
        header.read_header(io.BytesIO(data))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "multipart": fuzz_multipart, "dicom_json": fuzz_dicom_json, "qido": fuzz_qido,
    "cfind": fuzz_cfind, "mediatypes": fuzz_mediatypes, "header": fuzz_header,
}


def main(argv: list[str]) -> None:
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
