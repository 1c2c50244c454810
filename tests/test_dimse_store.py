"""C-STORE in, C-GET and C-MOVE out, with real dcmtk and pynetdicom peers (PS3.4 B, C.4.2, C.4.3).

What "byte-identical" means here:
* Every receiver writes its own File Meta Information (its implementation UID and version name),
  so the fair comparison is the data set after the File Meta group: what travels in a C-STORE.
* On the way in, dcmtk's storescu re-encodes some files while sending (undefined-length sequences
  get explicit lengths, Data Set Trailing Padding is dropped), so the stored data set equals the
  original element by element, and byte for byte for the files dcmtk sends unchanged.
* On the way out, the data set a peer receives is byte-identical to the one we stored (=
  received). ``storescp +B`` and ``getscu +B`` write it to disk as received (bit-preserving).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from storage.errors import NotFound
from tests.conftest import free_port, require, start_server, wait_for_port
from tests.dicomgen import make_image, make_study, write

pytestmark = pytest.mark.cloud  # server tests on SQLite + files and on PostgreSQL + S3

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
           "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "GDCMJ2K_TextGBR.dcm", "JPEG-LL.dcm", "waveform_ecg.dcm"]
REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")


def dataset_bytes(raw: bytes) -> bytes:
    """The encoded data set after the preamble and the File Meta group (explicit VR LE, PS3.10 7.1)."""
    assert raw[128:132] == b"DICM"
    return strip_padding(dataset_bytes_raw(raw))


def strip_padding(body: bytes) -> bytes:
    """Drop a top-level Data Set Trailing Padding (FFFC,FFFC): senders may drop it (dcmtk does)."""
    for header, size in ((b"\xfc\xff\xfc\xffOB\x00\x00", 12), (b"\xfc\xff\xfc\xff", 8)):
        at = body.rfind(header)
        if at >= 0 and at + size + int.from_bytes(body[at + size - 4:at + size], "little") == len(body):
            return body[:at]
    return body


def mixed_folder(folder: Path) -> dict[str, Path]:
    """pydicom's bundled samples that exist offline and carry the UIDs an archive needs, plus a
    generated CT study; returns SOP Instance UID -> file."""
    folder.mkdir(parents=True)
    out: dict[str, Path] = {}
    for name in SAMPLES:
        try:
            path = get_testdata_file(name, download=False)
        except Exception:  # not bundled in this pydicom
            path = None
        if path is None or Path(path).read_bytes()[128:132] != b"DICM":
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if not all(ds.get(k) for k in REQUIRED) or str(ds.SOPInstanceUID) in out:
            continue
        out[str(ds.SOPInstanceUID)] = Path(shutil.copy(path, folder / name))
    for p in make_study(folder, n_series=1, per_series=3, patient_id="MIX1"):
        out[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p
    return out


def storescu_config(files: list[Path], path: Path) -> Path:
    """A storescu profile with one presentation context per (SOP class, stored syntax), so dcmtk
    sends every file as it is (its 'Default' profile lacks JPEG 2000 and JPEG extended)."""
    pairs: dict[tuple[str, str], None] = {}
    for f in files:
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        pairs.setdefault((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)), None)
    lines, contexts = ["[[TransferSyntaxes]]"], []
    for i, (sop, ts) in enumerate(pairs, 1):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
        contexts.append(f"PresentationContext{i} = {sop}\\TS{i}")
    lines += ["[[PresentationContexts]]", "[Mixed]", *contexts, "[[Profiles]]", "[Mixed]",
              "PresentationContexts = Mixed"]
    path.write_text("\n".join(lines) + "\n")
    return path


def undefined_lengths(path: Path) -> bool:
    """Has the data set a sequence or an item of undefined length (which storescu re-encodes)?"""
    for elem in pydicom.dcmread(path, stop_before_pixels=True).iterall():
        if elem.VR == "SQ" and (elem.is_undefined_length or any(
                item.get("is_undefined_length_sequence_item", False) for item in elem.value)):
            return True
    return False


def _meta(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[132:len(raw) - len(dataset_bytes_raw(raw))]


def dataset_bytes_raw(raw: bytes) -> bytes:
    """Like dataset_bytes, keeping any trailing padding."""
    pos = 132
    long_vrs = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}
    while int.from_bytes(raw[pos:pos + 2], "little") == 0x0002:
        if raw[pos + 4:pos + 6] in long_vrs:
            pos += 12 + int.from_bytes(raw[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(raw[pos + 6:pos + 8], "little")
    return raw[pos:]


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, **kw)


def stored(server, sop_uids) -> dict[str, bytes]:
    """The stored data sets (after the File Meta), read through the archive facade."""
    archive = server.archive()
    try:
        return {uid: dataset_bytes(archive.read_bytes(archive.instances(sop_uid=uid)[0])) for uid in sop_uids}
    finally:
        archive.close()


def same_elements(a: Dataset, b: Dataset) -> bool:
    """Element-by-element equality of two data sets, ignoring trailing padding."""
    tags = {t for t in (*a.keys(), *b.keys()) if t != 0xFFFCFFFC}
    return all(t in a and t in b and a[t].value == b[t].value for t in tags)


def received(folder: Path) -> dict[str, bytes]:
    out = {}
    for f in folder.iterdir():
        raw = f.read_bytes()
        out[str(pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)] = raw
    return out


@pytest.fixture(scope="module")
def mixed(server, tmp_path_factory):
    """The mixed folder, pushed once by dcmtk storescu."""
    require("storescu")
    base = tmp_path_factory.mktemp("mixed")
    files = mixed_folder(base / "in")
    cfg = storescu_config(list(files.values()), base / "mixed.cfg")
    r = run(["storescu", "-aec", server.ae_title, "-xf", str(cfg), "Mixed", "+sd",
             "127.0.0.1", str(server.dicom_port), str(base / "in")])
    assert r.returncode == 0, r.stderr + r.stdout
    return files


def test_storescu_mixed_folder_is_stored_as_received(server, mixed):
    assert len(mixed) >= 8  # several SOP classes and transfer syntaxes
    held = stored(server, mixed)
    for sop_uid, path in mixed.items():
        original = pydicom.dcmread(path)
        back = pydicom.dcmread(io.BytesIO(path.read_bytes()[:132] + _meta(path) + held[sop_uid]))
        assert same_elements(back, original), path.name
        identical = held[sop_uid] == dataset_bytes(path.read_bytes())
        # byte for byte, but for the files dcmtk re-encodes: those with undefined-length items
        assert identical == (not undefined_lengths(path)), path.name
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in mixed.values()}
    assert len(syntaxes) >= 5


def test_movescu_to_storescp_is_byte_identical(server, mixed, tmp_path):
    require("movescu")
    out = tmp_path / "moved"
    out.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "MOVESCP", "+xa", "+B", "-od", str(out),
                            str(server.extra["move_port"])], env={"TCP_NODELAY": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(server.extra["move_port"])  # storescp listening before the C-MOVE
        studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in mixed.values()}
        for study in studies:
            r = run(["movescu", "-aec", server.ae_title, "-aem", "MOVESCP", "-S",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                     "127.0.0.1", str(server.dicom_port)])
            assert r.returncode == 0, r.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    got = received(out)
    assert set(got) == set(mixed)
    held = stored(server, mixed)
    for sop_uid, path in mixed.items():
        assert dataset_bytes(got[sop_uid]) == held[sop_uid], path.name


def test_getscu_gets_everything_back(server, mixed, tmp_path):
    """getscu proposes only uncompressed syntaxes for storage by default: uncompressed objects come
    back byte-identical, compressed ones decompressed by the SCP with the same pixels. One the SCP
    cannot decode (no 12-bit JPEG Extended decoder here) is a failed sub-operation: getscu reports
    a warning and that instance is missing."""
    require("getscu")
    out = tmp_path / "got"
    out.mkdir()
    failed = 0
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in mixed.values()}
    for study in studies:
        r = run(["getscu", "-v", "-aec", server.ae_title, "-S", "+B", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.dicom_port), "-od", str(out)])
        assert r.returncode == 0, r.stderr
        failed += "Failed Suboperations    : 0" not in r.stderr + r.stdout
    assert failed == sum(not decodable(p) for p in mixed.values())
    got = received(out)
    assert set(got) == {u for u, p in mixed.items() if decodable(p)}
    held = stored(server, mixed)
    for sop_uid, path in mixed.items():
        if sop_uid not in got:
            continue
        original = pydicom.dcmread(path)
        back = pydicom.dcmread(io.BytesIO(got[sop_uid]))
        ts = original.file_meta.TransferSyntaxUID
        if ts == ExplicitVRLittleEndian:  # getscu proposes it first and we take it: as stored
            assert dataset_bytes(got[sop_uid]) == held[sop_uid], path.name
        elif not ts.is_compressed:  # implicit VR, sent as stored or converted by pynetdicom
            assert same_elements(back, original), path.name
        else:  # decompressed by the SCP: same pixels as decoding the original
            assert not back.file_meta.TransferSyntaxUID.is_compressed, path.name
            assert np.array_equal(back.pixel_array, original.pixel_array), path.name


def decodable(path: Path) -> bool:
    """Can pydicom (and so the SCP) decode this file's pixel data, if compressed?"""
    ds = pydicom.dcmread(path)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return True
    try:
        ds.pixel_array  # noqa: B018
        return True
    except Exception:
        return False


def test_pynetdicom_storescu_app(server, tmp_path):
    path = write(make_image(patient_id="PYAPP1", sop_uid=generate_uid()), tmp_path)
    r = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "-aec", server.ae_title,
                        "127.0.0.1", str(server.dicom_port), str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    archive = server.archive()
    try:
        (info,) = archive.instances(sop_uid=str(pydicom.dcmread(path).SOPInstanceUID))
        assert same_elements(archive.dataset(info), pydicom.dcmread(path))
    finally:
        archive.close()


def test_pynetdicom_getscu_and_movescu_apps(server, tmp_path):
    """pynetdicom's own getscu, and its movescu with the Storage SCP it starts itself (``--store``),
    get a study back whole: every instance, every element as sent."""
    study, series = generate_uid(), generate_uid()
    sent = {}
    for i in range(3):
        ds = make_image(patient_id="PYAPP2", study_uid=study, series_uid=series, modality="MR",
                        instance_number=i + 1, pixel_seed=i)
        sent[str(ds.SOPInstanceUID)] = write(ds, tmp_path / "in")
    r = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "-aec", server.ae_title,
                        "127.0.0.1", str(server.dicom_port), str(tmp_path / "in")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    query = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    app = [sys.executable, "-m", "pynetdicom"]
    calls = {
        "got": ["getscu", "-S", "-aec", server.ae_title],
        "moved": ["movescu", "-S", "-aec", server.ae_title, "-aem", "MOVESCP", "--store",
                  "--store-aet", "MOVESCP", "--store-port", str(server.extra["move_port"])],
    }
    for folder, call in calls.items():
        out = tmp_path / folder
        out.mkdir()
        r = subprocess.run([*app, *call, *query, "-od", str(out), "127.0.0.1", str(server.dicom_port)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "Completed: 3, Failed: 0" in r.stderr, r.stderr[-2000:]
        got = received(out)
        assert set(got) == set(sent), folder
        for sop_uid, path in sent.items():
            assert same_elements(pydicom.dcmread(io.BytesIO(got[sop_uid])), pydicom.dcmread(path)), folder


# -- malformed input --------------------------------------------------------------------------------

def _raw_part10(path: Path, sop_uid: str, body: bytes) -> Path:
    """A file whose File Meta is valid but whose data set is ``body`` (sent as is, chunked)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    holder = Dataset()
    holder.file_meta = meta
    buf = io.BytesIO()
    holder.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue() + body)
    return path


def _encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def test_malformed_cstore_fails_cleanly(server, tmp_path):
    good = make_image(patient_id="BADIN1")
    no_study = make_image(patient_id="BADIN1")
    del no_study.StudyInstanceUID
    no_sop = make_image(patient_id="BADIN1")
    sop_missing_uid = no_sop.SOPInstanceUID
    del no_sop.SOPInstanceUID
    cases = {  # each is answered Cannot understand
        generate_uid(): _encoded(no_study)[0:],  # no StudyInstanceUID in the data set
        sop_missing_uid: _encoded(no_sop),  # command names a SOP instance the data set lacks
        generate_uid(): _encoded(good)[:300],  # truncated mid-element
        generate_uid(): b"\x08\x00\x16\x00UI\xff\xffgarbage" * 8,  # garbage
    }
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes after the meta as they are
    try:
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
        assert assoc.is_established
        for i, (sop_uid, body) in enumerate(cases.items()):
            path = _raw_part10(tmp_path / f"bad{i}.dcm", sop_uid, body)
            rsp = assoc.send_c_store(path)
            # Cannot understand (PS3.4 B.2.3): the archive cannot read the header it needs
            assert rsp.Status == 0xC000, (i, hex(rsp.Status))
            assert rsp.get("ErrorComment"), f"case {i}: no ErrorComment"
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    # the association is gone, the server still answers a new one
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
    assoc.release()
    archive = server.archive()
    try:
        for sop_uid in cases:
            with pytest.raises(NotFound):
                archive.instances(sop_uid=sop_uid)
    finally:
        archive.close()


def test_calling_ae_not_in_allow_list_is_rejected(tmp_path):
    require("echoscu")
    srv = start_server(tmp_path, PACS_ALLOWED_CALLING_AETS="GOOD",
                       PACS_DESTINATIONS=f"MOVESCP=127.0.0.1:{free_port()}")
    try:
        bad = run(["echoscu", "-aet", "EVIL", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port)])
        assert bad.returncode != 0
        assert "reject" in (bad.stderr + bad.stdout).lower()
        good = run(["echoscu", "-aet", "GOOD", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port)])
        assert good.returncode == 0, good.stderr
        audit = srv.pacs("audit").stdout.splitlines()
        refused = [line.split("\t") for line in audit if "\tlogin\tfailure\t" in line]
        assert len(refused) == 1, audit  # the refused one, not the allowed one
        assert refused[0][3] == "EVIL" and refused[0][4].startswith("127.0.0.1:")
        assert "calling AE title not allowed" in refused[0][-1]
    finally:
        srv.stop()
