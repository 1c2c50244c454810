"""Nothing that identifies a patient is readable on disk: not the blobs, not the index, not the logs."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import numpy as np
from pydicom.uid import generate_uid

from storage.blobstore import is_inline
from tests.conftest import require
from tests.dicomgen import dataset_bytes, make_image, write

SECRETS = {
    "PatientName": "Zyxwvut^Qwertyuiop",
    "PatientID": "PIDX9F3K2",
    "AccessionNumber": "ACCQ7W2E5",
    "StudyDescription": "Kumquat Xylophone Study",
}
PIXEL_RUN = bytes(range(200, 232))  # 32 distinctive bytes in the pixel data


def _needles() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in SECRETS.items():
        for v in {value, value.upper(), value.replace("^", " ")}:
            out[f"{name}/utf8/{v}"] = v.encode("utf-8")
            out[f"{name}/utf16le/{v}"] = v.encode("utf-16-le")
            out[f"{name}/utf16be/{v}"] = v.encode("utf-16-be")
    out["pixels"] = PIXEL_RUN
    return out


def test_no_phi_anywhere_on_disk(server, tmp_path):
    """A small object (kept inside the index database) and a large one (a blob file), same secrets."""
    require("storescu")
    folder = tmp_path / "in"
    originals = []
    study_uid = generate_uid()
    for size in (64, 256):  # 8 KB: inline in the index; 128 KB: a blob file
        pixels = np.zeros((size, size), dtype=np.uint16)
        pixels.view(np.uint8).reshape(-1)[1000:1032] = np.frombuffer(PIXEL_RUN, dtype=np.uint8)
        ds = make_image(patient_id=SECRETS["PatientID"], patient_name=SECRETS["PatientName"],
                        accession=SECRETS["AccessionNumber"], study_uid=study_uid,
                        study_description=SECRETS["StudyDescription"], pixels=pixels)
        originals.append(write(ds, folder).read_bytes())
    assert all(PIXEL_RUN in o and SECRETS["PatientID"].encode() in o for o in originals)
    proc = subprocess.run(["storescu", "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port),
                           "+sd", str(folder)],
                          capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})
    assert proc.returncode == 0, proc.stderr
    # Exercise reads and queries too, so logs and caches get their chance to leak.
    url = f"{server.dicomweb_url}/studies?PatientID={SECRETS['PatientID']}&PatientName=Zyx*"
    with urllib.request.urlopen(url, timeout=30) as resp:
        found = json.loads(resp.read() or b"[]")
    assert len(found) == 1
    archive = server.archive()
    try:
        infos = archive.instances(study_uid)
        stored = sorted(dataset_bytes(archive.read_bytes(i)) for i in infos)
        assert stored == sorted(dataset_bytes(o) for o in originals)  # all there
        assert sorted(is_inline(i.blob_key) for i in infos) == [False, True]
    finally:
        archive.close()

    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    files.append(server.data_dir.parent / "server.log")
    assert any(p.name == "index.sqlite" for p in files)
    assert sum(1 for p in files if p.parent.parent.parent.name == "blobs") >= 1
    leaks = []
    for path in files:
        data = path.read_bytes()
        leaks += [f"{label} in {path.relative_to(server.data_dir.parent)}"
                  for label, needle in _needles().items() if needle in data]
    assert leaks == []
