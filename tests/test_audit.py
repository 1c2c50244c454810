"""The audit trail (PS3.15 A.5 in spirit): store, read, export, letter issue/use, failed access,
key operations and deletion are appended with who, which patient/study, when, where and outcome;
``pacs audit --patient-id --since`` prints them; no PHI reaches the application log."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path

import pytest
import requests

from tests.dicomgen import make_study
from tests.test_letters import parse_letter

pytestmark = pytest.mark.cloud  # server tests on SQLite + files and on PostgreSQL + S3

NAME, PID = "Audit^Alice", "AUDIT-PID-77"


def test_trail_of_a_patient(server, tmp_path: Path) -> None:
    paths = make_study(tmp_path / "in", n_series=1, per_series=2, patient_id=PID, patient_name=NAME,
                       study_description="Audited study")
    server.pacs("import", "-q", str(tmp_path / "in"))
    letter = parse_letter(server.pacs("letter", "issue", "--patient-id", PID).stdout)
    root = f"{server.http_url}/letters/{letter['selector']}/dicom-web"
    auth = (letter["selector"], letter["access code"])
    study = subprocess.run(["dcmdump", "+P", "StudyInstanceUID", str(paths[0])], capture_output=True,
                           text=True).stdout.split("[")[1].split("]")[0]
    assert requests.get(f"{root}/studies/{study}", auth=auth, timeout=30,
                        headers={"Accept": "application/zip"}).status_code == 200
    assert requests.get(f"{root}/studies", auth=(letter["selector"], "0000-0000-0000-0000-0000"),
                        timeout=10).status_code == 401
    server.pacs("export", "--patient-id", PID, "--format", "zip", "--out", str(tmp_path / "r.zip"))
    server.pacs("keys", "rotate")

    out = server.pacs("audit", "--patient-id", PID, "--since", date.today().isoformat()).stdout
    rows = [line.split("\t") for line in out.splitlines()[1:]]
    actions = {(r[1], r[2]) for r in rows}
    for want in [("store", "success"), ("letter-issue", "success"), ("letter-use", "success"),
                 ("retrieve", "success"), ("letter-access", "failure"), ("export", "success")]:
        assert want in actions, (want, actions)
    use = next(r for r in rows if r[1] == "letter-use")
    assert use[3].startswith("patient-letter:") and use[4] == "127.0.0.1"  # who and from where
    assert any(r[1] == "store" and r[6] == study for r in rows)  # which study
    assert PID not in out and NAME not in out and "Alice" not in out  # references, not PHI
    assert "key-rotate" in server.pacs("audit", "--action", "key-rotate").stdout
    future = server.pacs("audit", "--patient-id", PID, "--since", "2999-01-01").stdout
    assert future.strip().count("\n") == 0  # only the header line

    server.pacs("patient", "shred", "--patient-id", PID, "--yes")
    shreds = server.pacs("audit", "--action", "shred").stdout
    assert "pacs patient shred" in shreds and "request" in shreds

    log = (server.data_dir.parent / "server.log").read_text(errors="replace")
    assert PID not in log and "Alice" not in log and letter["access code"] not in log
