"""Encode the DICOMDIR of an export (PS3.10 7.3 / 8.6, Basic Directory IOD PS3.3 F.3).

pydicom's ``FileSet.write`` copies every instance into its own ``PTxxxxxx/...`` layout, which a
streamed export cannot use (the DICOM members are already written when the DICOMDIR is). So
the records come from :mod:`storage.export.catalog` (pydicom's record creators) and this module
only lays them out: depth-first, each record's *Offset of the Next Directory Record* pointing to
its next sibling and *Offset of Referenced Lower-Level Directory Entity* to its first child, all
offsets counted from the first byte of the file (PS3.3 F.3.2.1). The offsets are UL, so the
encoding has the same length whatever their value: encode once to measure, then for real.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from storage.export.catalog import Catalog

_ITEM_HEADER = 8  # (FFFE,E000) tag + 4-byte length
_SQ_HEADER = 12  # explicit VR: tag, "SQ", 2 reserved, 4-byte length


class _Node:
    __slots__ = ("record", "children", "offset")

    def __init__(self, record: Dataset) -> None:
        self.record = record
        self.children: list[_Node] = []
        self.offset = 0


def _tree(catalog: Catalog) -> list[_Node]:
    roots: list[_Node] = []
    for patient in catalog.patients.values():
        p = _Node(patient.record)
        roots.append(p)
        for study in patient.studies.values():
            s = _Node(study.record)
            p.children.append(s)
            for series in study.series.values():
                r = _Node(series.record)
                s.children.append(r)
                r.children.extend(_Node(i.record) for i in series.instances)
    return roots


def _preorder(nodes: list[_Node]) -> Iterator[_Node]:
    for node in nodes:
        yield node
        yield from _preorder(node.children)


def _record_length(record: Dataset) -> int:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, record)
    return len(fp.getvalue())


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def build_dicomdir(catalog: Catalog, *, fileset_id: str = "EXPORT") -> bytes:
    """Return the encoded DICOMDIR for every instance registered in ``catalog``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = fileset_id[:16]
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0x0000

    roots = _tree(catalog)
    nodes = list(_preorder(roots))
    # (0004,1220) is the last element of the dataset: the first item starts after all others.
    offset = len(_encode(ds)) + _SQ_HEADER
    for node in nodes:
        node.offset = offset
        node.record.OffsetOfTheNextDirectoryRecord = 0
        node.record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
        offset += _ITEM_HEADER + _record_length(node.record)

    def link(siblings: list[_Node]) -> None:
        for i, node in enumerate(siblings):
            if i + 1 < len(siblings):
                node.record.OffsetOfTheNextDirectoryRecord = siblings[i + 1].offset
            if node.children:
                node.record.OffsetOfReferencedLowerLevelDirectoryEntity = node.children[0].offset
                link(node.children)

    link(roots)
    if roots:
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = roots[0].offset
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = roots[-1].offset
    ds.DirectoryRecordSequence = [node.record for node in nodes]
    data = _encode(ds)
    if nodes and data[nodes[0].offset : nodes[0].offset + 4] != b"\xfe\xff\x00\xe0":
        raise AssertionError("DICOMDIR offset computation is wrong")  # guards the layout above
    return data
