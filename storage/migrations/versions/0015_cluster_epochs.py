"""cluster epochs: counters nodes poll to drop what they cache when another node changed it
(storage/cluster.py); an index on shred_log.shredded_at for the feed of shredded keys

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 19:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cluster_epochs',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('value', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.bulk_insert(sa.table('cluster_epochs', sa.column('name', sa.String), sa.column('value', sa.BigInteger)),
                   [{'name': 'shred', 'value': 0}, {'name': 'keyring', 'value': 0}])
    op.create_index('ix_shred_log_shredded_at', 'shred_log', ['shredded_at'])


def downgrade() -> None:
    op.drop_index('ix_shred_log_shredded_at', table_name='shred_log')
    op.drop_table('cluster_epochs')
