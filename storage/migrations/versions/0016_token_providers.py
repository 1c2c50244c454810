"""token providers: each DICOMweb API token acts for one provider (issue 19 part 1)

``api_tokens.provider_id`` names the provider (NULL: ``default``, as every token made before);
``api_tokens.cross_tenant`` marks the administrators' tokens that see every provider's patients
(``pacs token create --cross-tenant``). No foreign key, as for ``patients.provider_id`` (0011):
providers are never deleted, only marked.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 18:45:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('provider_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('cross_tenant', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('cross_tenant')
        batch.drop_column('provider_id')
