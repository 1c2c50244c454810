"""Settings: the shipped file and the defaults load; a value the server cannot run with is refused
at start, naming the setting, before anything is started or written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from storage.config import ConfigError, Destination, load_settings
from tests.conftest import PACS, free_port

CONF = Path(__file__).resolve().parent.parent / "conf" / "pacs.toml"


def test_defaults_and_the_shipped_file_load(tmp_path):
    bare = load_settings(env={"PACS_DATA_DIR": str(tmp_path)})
    shipped = load_settings(CONF, env={"PACS_DATA_DIR": str(tmp_path)})
    assert (bare.dicom_port, bare.ae_title, bare.duplicate_policy) == (11112, "PACS", "keep")
    assert (shipped.dicom_port, shipped.http_port) == (bare.dicom_port, bare.http_port)


def test_good_values_from_the_environment(tmp_path):
    s = load_settings(env={"PACS_DATA_DIR": str(tmp_path), "PACS_DICOM_PORT": "4242",
                           "PACS_AE_TITLE": "ARCHIVE_2", "PACS_DUPLICATE_POLICY": "reject",
                           "PACS_DESTINATIONS": "WEASIS=10.0.0.5:11113, HOROS=11114"})
    assert (s.dicom_port, s.ae_title, s.duplicate_policy) == (4242, "ARCHIVE_2", "reject")
    assert s.destinations == {"WEASIS": Destination("WEASIS", "10.0.0.5", 11113),
                              "HOROS": Destination("HOROS", "127.0.0.1", 11114)}


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DICOM_PORT", "abc", "dicom_port: expected a whole number, got 'abc'"),
    ("DICOM_PORT", "70000", "dicom_port: a port is 1-65535"),
    ("HTTP_PORT", "0", "http_port: a port is 1-65535"),
    ("AE_TITLE", "THIS_AE_TITLE_IS_TOO_LONG", "ae_title: 'THIS_AE_TITLE_IS_TOO_LONG' is longer than 16"),
    ("AE_TITLE", "A\\B", "ae_title: 'A\\\\B' holds a backslash"),
    ("AE_TITLE", "  ", "ae_title: is empty"),
    ("ALLOWED_CALLING_AETS", "CT1,ALSO_MUCH_TOO_LONG_AE", "allowed_calling_aets: 'ALSO_MUCH_TOO_LONG_AE'"),
    ("DUPLICATE_POLICY", "overwrite", "duplicate_policy: one of keep, replace, reject, got 'overwrite'"),
    ("HTTP_WORKERS", "0", "http_workers: must be at least 1"),
    ("DIMSE_WORKERS", "-1", "dimse_workers: must be at least 1"),
    ("NETWORK_TIMEOUT", "soon", "network_timeout: expected a number, got 'soon'"),
    ("CONNECT_TIMEOUT", "0", "connect_timeout: must be more than 0 seconds"),
    ("DIMSE_MAX_PDU", "100", "dimse_max_pdu: 0 (no limit) or at least 4096"),
    ("DESTINATIONS", "WEASIS=nohostport", "destinations: 'WEASIS=nohostport' is not AE=host:port"),
    ("DESTINATIONS", "WEASIS=10.0.0.5:\u00b2", "destinations: 'WEASIS=10.0.0.5:\u00b2' is not AE=host:port"),
    ("DESTINATIONS", "WEASIS=10.0.0.5:99999", "destinations: the port of WEASIS is 99999"),
    ("DICOMWEB_ROOT", "dicom-web", "dicomweb_root: a path starting with /"),
])
def test_a_bad_value_is_refused_naming_its_setting(tmp_path, name, value, says):
    with pytest.raises(ConfigError) as err:
        load_settings(env={"PACS_DATA_DIR": str(tmp_path), f"PACS_{name}": value})
    assert says in str(err.value)


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(env={"PACS_DATA_DIR": str(tmp_path), "PACS_HTTP_WORKERS": "0",
                           "PACS_DUPLICATE_POLICY": "x", "PACS_AE_TITLE": "X" * 17})
    assert all(name in str(err.value) for name in ("http_workers", "duplicate_policy", "ae_title"))


def test_a_bad_destination_table_in_the_file(tmp_path):
    conf = tmp_path / "pacs.toml"
    conf.write_text('[destinations]\nWEASIS = { host = "10.0.0.5" }\n')
    with pytest.raises(ConfigError, match="destinations: 'WEASIS' needs a port"):
        load_settings(conf, env={"PACS_DATA_DIR": str(tmp_path)})


def test_serve_with_a_bad_setting_says_which_and_starts_nothing(tmp_path):
    """Before: a 17-character AE title passed, and every DIMSE worker crashed on start, restarted,
    and crashed again while the HTTP side ran on; a policy typo was taken silently."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_PORT=str(free_port()), PACS_AE_TITLE="THIS_AE_TITLE_IS_TOO_LONG")
    run = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "ae_title" in run.stderr and "longer than 16 characters" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", [["serve"], ["import", "."], ["audit"]])
def test_an_unusable_data_directory_is_one_line_not_a_traceback(tmp_path, command):
    """A data directory that cannot be made (here: below a regular file)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(blocker / "data"), PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_PORT=str(free_port()))
    run = subprocess.run([PACS, *command], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 1
    assert str(blocker / "data") in run.stderr and "Not a directory" in run.stderr
    assert "Traceback" not in run.stderr
