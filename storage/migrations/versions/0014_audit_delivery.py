"""audit_delivery: the delivered-up-to marker and sender lease of audit to a repository (IHE ATNA)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 19:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_delivery',
        sa.Column('repository', sa.String(length=255), nullable=False),
        sa.Column('delivered_id', sa.Integer(), nullable=False),
        sa.Column('owner', sa.String(length=128), nullable=False),
        sa.Column('lease_until', sa.DateTime(), nullable=True),
        sa.Column('delivered_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('repository'),
    )


def downgrade() -> None:
    op.drop_table('audit_delivery')
