"""shred log: the key ids of shredded patients, replayed by ``pacs restore`` onto older backups

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-03 16:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'shred_log',
        sa.Column('key_id', sa.String(length=32), nullable=False),
        sa.Column('shredded_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key_id'),
    )


def downgrade() -> None:
    op.drop_table('shred_log')
