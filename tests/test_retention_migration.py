"""Migration 0005 on an index made by the previous schema: every patient gets a receipt date from
what the index knew (the newest instance's ``received_at``, else the patient's ``created_at``) and
their latest real study date; nothing is left empty and no row is lost (issue 13)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from storage.index.db import MIGRATIONS, make_engine


def _upgrade(engine: sa.Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _legacy_rows(conn: sa.Connection) -> None:
    """Three patients as schema 0004 held them: last_visit mixed study date and receipt."""
    ins = conn.exec_driver_sql
    for n in (1, 2, 3):
        ins(f"INSERT INTO patient_keys (key_id, kek_version, wrapped, created_at) "
            f"VALUES ('k{n}', 1, X'00', '2019-01-01 00:00:00')"
            if conn.dialect.name == "sqlite" else
            f"INSERT INTO patient_keys (key_id, kek_version, wrapped, created_at) "
            f"VALUES ('k{n}', 1, '\\x00', '2019-01-01 00:00:00')")
    blob = "X'00'" if conn.dialect.name == "sqlite" else "'\\x00'"
    created = {1: "2019-03-01 08:00:00", 2: "2020-05-05 09:00:00", 3: "2018-02-02 10:00:00"}
    visit = {1: "20100215", 2: "20200505", 3: "20180202"}
    for n in (1, 2, 3):
        ins(f"INSERT INTO patients (id, pid_hash, id_hash, key_id, phi, last_visit, created_at, "
            f"num_studies, num_series, num_instances) VALUES ({n}, {blob.replace('00', f'0{n}')}, "
            f"{blob}, 'k{n}', {blob}, '{visit[n]}', '{created[n]}', 0, 0, 0)")
    # patient 1: two studies (2010 and 2012, plus one with a broken date), received 2019 and 2024
    # patient 2: one study with no date, received 2020; patient 3: no instances left
    studies = [(1, 1, "20100215"), (2, 1, "20120301"), (3, 1, "2013"), (4, 2, "")]
    for sid, pid, day in studies:
        ins(f"INSERT INTO studies (id, patient_id, study_uid, study_date, study_time, modalities, "
            f"sop_classes, num_series, num_instances, phi, updated_at) VALUES ({sid}, {pid}, "
            f"'1.2.{sid}', '{day}', '', '', '', 1, 1, {blob}, '2024-01-01 00:00:00')")
        ins(f"INSERT INTO series (id, study_id, series_uid, modality, series_date, series_time, "
            f"body_part, num_instances, phi, updated_at) VALUES ({sid}, {sid}, '1.3.{sid}', 'CT', '', "
            f"'', '', 1, {blob}, '2024-01-01 00:00:00')")
    received = {1: "2019-03-01 08:00:01", 2: "2024-06-30 23:59:59", 3: "2019-03-01 08:00:02",
                4: "2020-05-05 09:00:01"}
    for sid, when in received.items():
        ins(f"INSERT INTO instances (id, series_id, sop_uid, sop_class_uid, transfer_syntax, "
            f"content_type, blob_key, blob_size, size, phi, received_at) VALUES ({sid}, {sid}, "
            f"'1.4.{sid}', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', '', 'b{sid}', 1, 1, "
            f"{blob}, '{when}')")


def test_the_migration_fills_the_receipt_date_from_what_the_index_knew(db_url):
    engine = make_engine(db_url)
    try:
        _upgrade(engine, "0004")
        with engine.begin() as conn:
            _legacy_rows(conn)
        _upgrade(engine, "head")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, last_study_date, last_received_at FROM patients "
                                        "ORDER BY id")).all()
            columns = {c["name"] for c in sa.inspect(conn).get_columns("patients")}
            counts = [conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar()
                      for t in ("patients", "studies", "series", "instances")]
        got = [(r[0], r[1], r[2] if isinstance(r[2], datetime) else datetime.fromisoformat(r[2]))
               for r in rows]
        assert got == [
            (1, "20120301", datetime(2024, 6, 30, 23, 59, 59)),  # newest instance; "2013" is no date
            (2, "", datetime(2020, 5, 5, 9, 0, 1)),
            (3, "", datetime(2018, 2, 2, 10, 0, 0)),  # no instances: when the patient was created
        ]
        assert "last_visit" not in columns
        assert counts == [3, 4, 4, 4]  # nothing lost (no table rebuilt under its foreign keys)
    finally:
        engine.dispose()
