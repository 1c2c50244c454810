"""patient letters, access failures, patient sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:05:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'letters',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('selector', sa.String(length=64), nullable=False),
        sa.Column('patient_ref', sa.Integer(), nullable=False),
        sa.Column('code_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('passcode_hash', sa.String(length=256), nullable=False),
        sa.Column('study_uids', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=True),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('locked_at', sa.DateTime(), nullable=True),
        sa.Column('last_failure_at', sa.DateTime(), nullable=True),
        sa.Column('last_used_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('selector'),
    )
    with op.batch_alter_table('letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_letters_patient_ref'), ['patient_ref'], unique=False)
    op.create_table(
        'access_failures',
        sa.Column('client', sa.String(length=64), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('last_failure_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('client'),
    )
    with op.batch_alter_table('access_failures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_failures_last_failure_at'), ['last_failure_at'],
                              unique=False)
    op.create_table(
        'patient_sessions',
        sa.Column('id_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('letter_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id_hash'),
    )
    with op.batch_alter_table('patient_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_sessions_letter_id'), ['letter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_sessions_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_table('patient_sessions')
    op.drop_table('access_failures')
    op.drop_table('letters')
