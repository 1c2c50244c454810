"""retention clock: a patient's latest study date and last receipt, kept apart (issue 13)

``patients.last_visit`` was the latest StudyDate (the receipt date only when StudyDate was empty),
so a legacy study received today could already be past retention. It becomes two columns:

* ``last_study_date``: the latest valid StudyDate of the patient's studies (YYYYMMDD, or "");
* ``last_received_at``: when the archive last received anything for the patient, filled from what
  the index knows: the newest ``instances.received_at`` of the patient, else ``patients.created_at``.
  Never empty. On SQLite the column stays nullable in the file (making it NOT NULL would rebuild
  ``patients``, and dropping that table with foreign keys on would cascade into the studies); a
  NULL is never due (``NULL < cutoff`` is not true).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 16:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_LATEST_STUDY = """
COALESCE((SELECT MAX(s.study_date) FROM studies s
          WHERE s.patient_id = patients.id AND LENGTH(s.study_date) = 8), '')
"""
_LAST_RECEIPT = """
COALESCE((SELECT MAX(i.received_at) FROM instances i
          JOIN series r ON i.series_id = r.id
          JOIN studies s ON r.study_id = s.id
          WHERE s.patient_id = patients.id), patients.created_at)
"""


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # plain ALTER TABLE (no batch rebuild of patients: see above)
    op.add_column('patients', sa.Column('last_study_date', sa.String(length=8), nullable=False,
                                        server_default=''))
    op.add_column('patients', sa.Column('last_received_at', sa.DateTime(), nullable=True))
    op.execute(f"UPDATE patients SET last_study_date = {_LATEST_STUDY}, "
               f"last_received_at = {_LAST_RECEIPT}")
    # a row created before created_at was ever written cannot exist (it is NOT NULL since 0001);
    # if one did, it counts as received now: never shredded sooner than the period from today
    op.execute("UPDATE patients SET last_received_at = CURRENT_TIMESTAMP WHERE last_received_at IS NULL")
    if not sqlite:
        op.alter_column('patients', 'last_received_at', nullable=False)
    op.create_index('ix_patients_last_received_at', 'patients', ['last_received_at'])
    if sqlite:
        op.execute("ALTER TABLE patients DROP COLUMN last_visit")  # SQLite >= 3.35, in place
    else:
        op.drop_column('patients', 'last_visit')


def downgrade() -> None:
    op.add_column('patients', sa.Column('last_visit', sa.String(length=8), nullable=False,
                                        server_default=''))
    op.execute("UPDATE patients SET last_visit = last_study_date")  # "" is never due: the safe side
    op.drop_index('ix_patients_last_received_at', 'patients')
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE patients DROP COLUMN last_received_at")
        op.execute("ALTER TABLE patients DROP COLUMN last_study_date")
    else:
        op.drop_column('patients', 'last_received_at')
        op.drop_column('patients', 'last_study_date')
