"""Issue 4 part 8: a CT study pushed with dcmtk storescu shows in OHIF served by ``pacs serve``.

Chromium opens ``/viewer/viewer?StudyInstanceUIDs=<uid>``; OHIF queries QIDO, reads series
metadata and fetches frames with ``Accept: multipart/related; type=application/octet-stream;
transfer-syntax=*`` from our WADO-RS; the viewport must show non-black pixels.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from tests.browser import browser_unavailable, open_ohif_study
from tests.conftest import require
from tests.dicomgen import make_image, write


def test_ct_study_renders_in_ohif(server, tmp_path):
    why = browser_unavailable()
    if why:
        pytest.fail(f"browser tests need {why}: run scripts/test")
    yy, xx = np.mgrid[0:256, 0:256]
    study_uid = pydicom.uid.generate_uid()
    series_uid = pydicom.uid.generate_uid()
    for i in range(3):
        disc = ((yy - 128) ** 2 + (xx - 128) ** 2 < (60 + 10 * i) ** 2) * 1500 + 400
        write(make_image(study_uid=study_uid, series_uid=series_uid, rows=256, columns=256,
                         instance_number=i + 1, patient_id="OHIF1", pixels=disc), tmp_path / "ct")
    subprocess.run([require("storescu"), "-aec", server.ae_title, "+sd", "+r", "127.0.0.1",
                    str(server.dicom_port), str(tmp_path / "ct")], check=True, timeout=60,
                   capture_output=True, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    view = open_ohif_study(server.http_url, study_uid, timeout_s=90)
    assert view.nonblack > 0.01
    assert not view.external_requests
    frames = [u for u in view.requests if "/frames/" in u and "/dicom-web/" in u]
    assert frames, "OHIF fetched no frames from WADO-RS"
