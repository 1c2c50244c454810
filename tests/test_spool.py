"""The encrypted spool keeps plaintext off the disk and reads back what was written."""

import os

import pytest

from storage.spool import EncryptedSpool


@pytest.mark.parametrize("size", [0, 10, 1 << 16, (1 << 20) + 5])
def test_round_trip_and_nothing_plain_on_disk(tmp_path, size):
    data = os.urandom(size) if size < 100 else b"PATIENT-SECRET-" * (size // 15)
    spool = EncryptedSpool(max_size=1 << 16, dir=tmp_path)
    for i in range(0, len(data), 7000):
        spool.write(data[i: i + 7000])
    assert spool.rolled == (len(data) > 1 << 16)
    if spool.rolled:  # the unlinked file holds ciphertext only
        fd_path = f"/proc/self/fd/{spool._file.fileno()}"
        with open(fd_path, "rb") as fh:
            assert b"PATIENT-SECRET" not in fh.read()
    spool.seek(0)
    assert spool.read() == data
    spool.seek(len(data) // 2)
    assert spool.read(10) == data[len(data) // 2: len(data) // 2 + 10]
    spool.close()
    assert list(tmp_path.iterdir()) == []
