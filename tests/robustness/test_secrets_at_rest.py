"""Secrets stay secret (issue 20 part 6): the master key file and its directory, and the end-of-run
scan of every server log for patient strings and master keys (tests/conftest.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests import conftest
from tests.conftest import pacs_command
from tests.dicomgen import PATIENT_STRINGS, make_image


def test_master_key_file_0600_in_a_directory_others_cannot_read(tmp_path: Path, figures) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as a umask of 022 makes it
    folder = tmp_path / "in"
    folder.mkdir()
    make_image(patient_id="SEC-KEY").save_as(folder / "a.dcm", enforce_file_format=True)
    (data / "master.key.tmp").write_text("left over")  # an interrupted earlier write
    os.chmod(data / "master.key.tmp", 0o644)
    assert pacs_command(data, "import", str(folder)).returncode == 0
    key = data / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) & 0o007 == 0
    fresh = tmp_path / "fresh" / "data"  # a data directory the server makes itself
    assert pacs_command(fresh, "import", str(folder)).returncode == 0
    assert stat.S_IMODE((fresh / "master.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o007 == 0
    figures(key_files_checked=2)


def test_log_scan_finds_a_patient_string_and_a_master_key(tmp_path: Path) -> None:
    log, key = tmp_path / "server.log", tmp_path / "master.key"
    key.write_text("# master key\n1:c2VjcmV0LWtleS1ieXRlcy10aGF0LWFyZS1ub3QtcmVhbA==\n")
    make_image(patient_id="SEC-LEAK-7", patient_name="Leaky^Lou")
    assert "SEC-LEAK-7" in PATIENT_STRINGS
    log.write_text("INFO all fine\n")
    conftest.SERVER_LOGS.append((log, key))
    try:
        assert not [x for x in conftest._log_leaks() if str(log) in x]
        log.write_text("INFO stored Leaky^Lou\nkey c2VjcmV0LWtleS1ieXRlcy10aGF0LWFyZS1ub3QtcmVhbA==\n")
        leaks = [x for x in conftest._log_leaks() if str(log) in x]
        assert leaks and "Leaky^Lou" in leaks[0] and "the master key" in leaks[0]
    finally:
        conftest.SERVER_LOGS.remove((log, key))
