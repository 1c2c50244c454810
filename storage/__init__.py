"""The archive core: no network code. Front doors (``pacs/``, ``dicomweb/``) call only :class:`Archive`.

Contract (see ``archive.py`` for details):

* ``Archive(settings, create_key=False)`` — one per process, after any fork.
* ``store(bytes | file | path, actor=, origin=, content_type=) -> StoreResult`` — the one ingest path.
* ``find(Query) -> Iterator[dict]`` — C-FIND and QIDO-RS matching (``query.py``).
* ``instances(study_uid, series_uid, sop_uid, scope) -> list[InstanceInfo]`` — raises NotFound.
* ``open(info)`` (seekable plaintext stream), ``read_bytes``, ``header``, ``dataset``, ``read_frame``.
* ``delete(...)``, ``shred_patient(patient_ref)``, ``sweep_orphans()``; ``audit.record(...)``.

Errors are in ``errors.py``; each front door maps them once.
"""

from .archive import Archive, InstanceInfo, Scope, StoreResult
from .query import Query

__all__ = ["Archive", "InstanceInfo", "Query", "Scope", "StoreResult"]
