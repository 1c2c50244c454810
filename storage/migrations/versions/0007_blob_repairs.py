"""dispersed blobs below full redundancy, for pacs blobs repair

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 16:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'blob_repairs',
        sa.Column('key', sa.String(length=32), nullable=False),
        sa.Column('shares', sa.String(length=800), nullable=False),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('recorded_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )


def downgrade() -> None:
    op.drop_table('blob_repairs')
