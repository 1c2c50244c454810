"""``pacs check`` finds each kind of fault it claims to (storage/check.py), and none on a sound archive."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from storage.check import check
from storage.index.models import PatientKey, Series
from tests.conftest import pacs_command
from tests.dicomgen import make_image, make_study


def _kinds(archive, **kw) -> set[str]:  # noqa: ANN001
    return {kind for kind, _ in check(archive, **kw).findings}


def test_check_finds_each_fault(archive, tmp_path: Path, figures) -> None:  # noqa: ANN001
    big = make_image(patient_id="CHK-BIG", rows=256, columns=256)  # > inline limit: a blob file
    stored = [archive.store(p) for p in make_study(tmp_path / "s", n_series=2, per_series=2,
                                                    patient_id="CHK-1")]
    archive.store(_bytes(big))
    report = check(archive, grace_seconds=0)
    assert report.ok, report.lines()
    assert report.instances == 5 and report.blobs_verified == 5

    file_info = archive.instances(study_uid=big.StudyInstanceUID)[0]
    path = archive.blobs.path(file_info.blob_key)
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # one flipped bit in the first segment
    path.write_bytes(bytes(data))
    assert "blob fails authentication" in _kinds(archive)
    path.write_bytes(bytes(data[:-5]))
    assert "blob size differs from the index" in _kinds(archive)
    path.unlink()
    assert "indexed blob missing" in _kinds(archive)

    orphan = archive.blobs.create(archive.blobs.new_key())
    archive.blobs.commit(orphan)
    assert "orphan blob" not in _kinds(archive)  # young: a store in flight
    assert "orphan blob" in _kinds(archive, grace_seconds=0)

    with archive.write_sessions.begin() as s:
        s.execute(update(Series).where(Series.series_uid == stored[0].series_uid)
                  .values(num_instances=7))
        s.execute(update(PatientKey).values(wrapped=b"\0" * 60))
    kinds = _kinds(archive, grace_seconds=0)
    assert {"series instance count wrong", "patient key does not unwrap"} <= kinds
    report = check(archive, grace_seconds=0)
    text = "\n".join(report.lines())
    assert "CHK-1" not in text and "Doe" not in text  # ids only, no patient values
    figures(faults_injected=6, kinds_found=len(kinds))


def test_pacs_check_command_exit_status(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert pacs_command(data, "import", str(_folder(tmp_path))).returncode == 0
    ok = pacs_command(data, "check", "--grace", "0")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "archive is consistent" in ok.stdout
    blob = next(p for p in (data / "blobs").rglob("*") if p.is_file())
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    bad = pacs_command(data, "check")
    assert bad.returncode == 1
    assert "FAULT blob fails authentication: 1" in bad.stdout
    assert "CHK-CLI" not in bad.stdout + bad.stderr


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    make_study(folder, n_series=1, per_series=2, patient_id="CHK-CLI")
    ds = make_image(patient_id="CHK-CLI", rows=256, columns=256)
    ds.save_as(folder / "big.dcm", enforce_file_format=True)
    return folder


def _bytes(ds) -> bytes:  # noqa: ANN001
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
