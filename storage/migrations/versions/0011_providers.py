"""providers: the tenants of the archive (issue 19); every patient belongs to one

Existing data migrates into the provider ``default`` (id 1). ``patients.provider_id`` carries no
foreign key in the file: SQLite cannot add a column with a REFERENCES clause and a non-NULL
default; providers are never deleted (only marked ``deleted_at``), so no row can dangle.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 18:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'providers',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('deleted_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.execute("INSERT INTO providers (id, name, created_at) VALUES (1, 'default', CURRENT_TIMESTAMP)")
    if op.get_bind().dialect.name == "postgresql":  # the explicit id did not advance the sequence
        op.execute("SELECT setval(pg_get_serial_sequence('providers', 'id'), 1)")
    op.add_column('patients', sa.Column('provider_id', sa.Integer(), nullable=False,
                                        server_default='1'))
    op.create_index('ix_patients_provider_id', 'patients', ['provider_id'])


def downgrade() -> None:
    op.drop_index('ix_patients_provider_id', table_name='patients')
    with op.batch_alter_table('patients') as batch:
        batch.drop_column('provider_id')
    op.drop_table('providers')
