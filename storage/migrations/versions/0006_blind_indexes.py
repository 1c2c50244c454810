"""blind-index token tables (storage/blindindex.py) and the progress of `pacs reindex`

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 16:00:00

An archive that already holds patients gets the tables empty and ``reindex_state`` rows saying so:
until ``pacs reindex`` has run, searches on names and descriptions read (and decrypt) every row
instead of trusting tokens that are not there yet.
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_TABLES = (('patient_tokens', 'patient_id', 'patients'), ('study_tokens', 'study_id', 'studies'),
           ('series_tokens', 'series_id', 'series'))


def upgrade() -> None:
    for name, column, parent in _TABLES:
        op.create_table(
            name,
            sa.Column('token', sa.LargeBinary(length=4), nullable=False),
            sa.Column(column, sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint([column], [f'{parent}.id'], ondelete='CASCADE'),
            sa.PrimaryKeyConstraint('token', column),
            sqlite_with_rowid=False,
        )
        op.create_index(f'ix_{name}_{column}', name, [column])
    state = op.create_table(
        'reindex_state',
        sa.Column('level', sa.String(length=16), nullable=False),
        sa.Column('last_id', sa.Integer(), nullable=False),
        sa.Column('done', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('level'),
    )
    bind = op.get_bind()
    rows = []
    for level, table in (('PATIENT', 'patients'), ('STUDY', 'studies'), ('SERIES', 'series')):
        empty = bind.execute(sa.text(f'SELECT 1 FROM {table} LIMIT 1')).first() is None
        rows.append({'level': level, 'last_id': 0, 'done': empty})
    op.bulk_insert(state, rows)


def downgrade() -> None:
    op.drop_table('reindex_state')
    for name, column, _ in reversed(_TABLES):
        op.drop_index(f'ix_{name}_{column}', name)
        op.drop_table(name)
