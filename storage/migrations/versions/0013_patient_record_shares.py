"""the patient's whole record, shares and their sessions (issue 19 parts 2 and 3)

``session_letters``: further letters a patient added to a page session (the session's own letter
stays ``patient_sessions.letter_id``). ``shares``: read-only grants a patient made for another
doctor (random selector, HMAC of a fresh access code, expiry, revocation, failure counters like a
letter's); ``share_scopes``: what each share covers, one row per patient record (letter) it came
from; ``share_sessions``: the viewer's cookie and the DICOMweb bearer tokens of a share.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-03 18:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'session_letters',
        sa.Column('id_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('letter_id', sa.Integer(), nullable=False),
        sa.Column('added_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id_hash', 'letter_id'),
    )
    op.create_index('ix_session_letters_letter_id', 'session_letters', ['letter_id'])
    op.create_table(
        'shares',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('selector', sa.String(length=64), nullable=False),
        sa.Column('code_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('created_by', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('locked_at', sa.DateTime(), nullable=True),
        sa.Column('last_failure_at', sa.DateTime(), nullable=True),
        sa.Column('last_used_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('selector'),
    )
    op.create_table(
        'share_scopes',
        sa.Column('share_id', sa.Integer(), nullable=False),
        sa.Column('patient_ref', sa.Integer(), nullable=False),
        sa.Column('letter_id', sa.Integer(), nullable=False),
        sa.Column('study_uids', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('share_id', 'patient_ref'),
    )
    op.create_index('ix_share_scopes_patient_ref', 'share_scopes', ['patient_ref'])
    op.create_table(
        'share_sessions',
        sa.Column('id_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('share_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id_hash'),
    )
    op.create_index('ix_share_sessions_share_id', 'share_sessions', ['share_id'])
    op.create_index('ix_share_sessions_expires_at', 'share_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_table('share_sessions')
    op.drop_index('ix_share_scopes_patient_ref', table_name='share_scopes')
    op.drop_table('share_scopes')
    op.drop_table('shares')
    op.drop_index('ix_session_letters_letter_id', table_name='session_letters')
    op.drop_table('session_letters')
