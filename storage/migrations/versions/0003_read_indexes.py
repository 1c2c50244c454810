"""read path indexes: the QIDO study list order, series waiting for their metadata cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 14:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_PENDING = sa.text('metadata_cache IS NULL')


def upgrade() -> None:
    op.create_index('ix_studies_listing', 'studies',
                    [sa.text('study_date DESC'), sa.text('study_time DESC'), sa.text('id DESC')])
    op.create_index('ix_series_metadata_pending', 'series', ['updated_at'],
                    sqlite_where=_PENDING, postgresql_where=_PENDING)


def downgrade() -> None:
    op.drop_index('ix_series_metadata_pending', table_name='series')
    op.drop_index('ix_studies_listing', table_name='studies')
