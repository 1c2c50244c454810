"""C-STORE spool files hold ciphertext only, and read back as written."""

from pathlib import Path

import pytest
from pynetdicom import _config, dimse_messages

from pacs import receive


def test_spool_is_encrypted_and_reads_back(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    receive.enable(tmp_path)
    monkeypatch.setattr(receive, "MEMORY_LIMIT", 1 << 20)
    spool = receive._factory(delete=False, mode="wb", suffix=".dcm")
    data = b"\0" * 128 + b"DICM" + b"PATIENT^SECRET " * 200_000  # ~3 MB over several segments
    for i in range(0, len(data), 16384):
        spool.write(data[i: i + 16384])
        spool.file.flush()
    with receive.open_received(spool.name) as fh:
        assert fh.read() == data
    on_disk = Path(spool.name).read_bytes()
    assert b"PATIENT^SECRET" not in on_disk and len(on_disk) > len(data)
    spool.close()
    Path(spool.name).unlink()
    assert list(tmp_path.iterdir()) == []


def test_small_data_sets_stay_in_memory(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    receive.enable(tmp_path)
    spool = receive._factory(delete=False, mode="wb", suffix=".dcm")
    spool.write(b"small object")
    with receive.open_received(spool.name) as fh:
        assert fh.read() == b"small object"
    assert list(tmp_path.iterdir()) == []  # no file at all
    spool.close()


def test_discard_removes_a_rolled_over_spool(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    receive.enable(tmp_path)
    monkeypatch.setattr(receive, "MEMORY_LIMIT", 1 << 16)
    big, small = receive.new_spool(), receive.new_spool()
    big.write(b"x" * (1 << 17))
    small.write(b"y")
    assert [p.name for p in tmp_path.iterdir()] == [Path(big.name).name]
    big.discard()
    small.discard()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        receive.open_received(big.name)
