"""pacs.dimse.receive: C-STORE spools hold ciphertext only on disk, read back as written, and a
spool that cannot be written is that object's refusal, not an error raised into pynetdicom."""

import errno
import os
from pathlib import Path

import pytest

from pacs.dimse import receive
from pacs.status import OUT_OF_RESOURCES
from storage.spool import EncryptedSpool


def open_files_in(directory: Path) -> dict[int, bytes]:
    """What this process holds open under ``directory``, by descriptor (unlinked files too)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            with open(f"/proc/self/fd/{fd}", "rb") as fh:
                out[int(fd)] = fh.read()
    return out


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(receive, "_DIR", [None])
    receive.configure(tmp_path / "spool")
    return tmp_path / "spool"


def test_spool_is_encrypted_and_reads_back(spool_dir: Path, monkeypatch):
    monkeypatch.setattr(receive, "MEMORY_LIMIT", 1 << 20)
    spool = receive.PynetdicomSpool()  # what pynetdicom's NamedTemporaryFile(...) now returns
    data = b"\0" * 128 + b"DICM" + b"PATIENT^SECRET " * 200_000  # ~3 MB over several segments
    for i in range(0, len(data), 16384):
        assert spool.write(data[i: i + 16384]) == len(data[i: i + 16384])
        spool.file.flush()
    with spool.open() as fh:
        assert fh.read() == data
        (on_disk,) = open_files_in(spool_dir).values()  # one file, unlinked, ciphertext only
        assert b"PATIENT^SECRET" not in on_disk and len(on_disk) > len(data)
    assert not Path(spool.name).exists()  # the name is only a key: nothing is created under it
    spool.close()
    assert list(spool_dir.iterdir()) == [] and open_files_in(spool_dir) == {}


def test_small_data_sets_stay_in_memory(spool_dir: Path):
    spool = receive.PynetdicomSpool()
    spool.write(b"small object")
    assert open_files_in(spool_dir) == {}  # no file at all
    with spool.open() as fh:
        assert fh.read() == b"small object"
    spool.close()


def test_discard_closes_a_rolled_over_spool(spool_dir: Path, monkeypatch):
    monkeypatch.setattr(receive, "MEMORY_LIMIT", 1 << 16)
    big, small = receive.new_spool(), receive.new_spool()
    assert isinstance(big, EncryptedSpool)
    big.write(b"x" * (1 << 17))
    small.write(b"y")
    assert len(open_files_in(spool_dir)) == 1 and big.rolled and not small.rolled
    big.discard()
    small.discard()
    assert open_files_in(spool_dir) == {} and list(spool_dir.iterdir()) == []


def test_a_spool_that_cannot_be_written_is_refused_when_read(spool_dir: Path, monkeypatch):
    """A full disk while pynetdicom writes: the write is swallowed (the association goes on), the
    handler's read raises it, and the refusal is Out of Resources."""
    spool = receive.PynetdicomSpool()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EncryptedSpool, "write", full)
    assert spool.write(b"data set") == len(b"data set")
    assert spool.write(b"more of it") == len(b"more of it")  # dropped, still no error
    with pytest.raises(OSError) as raised:
        spool.open()
    assert receive.refusal(raised.value, "SCU")[0] == OUT_OF_RESOURCES
    spool.close()
    assert open_files_in(spool_dir) == {}
