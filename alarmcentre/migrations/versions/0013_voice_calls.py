"""voice calls: the calls of an incident, a device's SIM number, the answer time

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 21:22:52

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('voice_calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_sid', sa.String(length=64), nullable=True),
    sa.Column('direction', sa.Enum('inbound', 'outbound', name='calldirection', native_enum=False, length=32), nullable=False),
    sa.Column('purpose', sa.Enum('incoming', 'answer', 'call_person', 'dispatch', name='callpurpose', native_enum=False, length=32), nullable=False),
    sa.Column('incident_id', sa.Integer(), nullable=True),
    sa.Column('client_id', sa.Integer(), nullable=True),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('from_number', sa.String(length=32), nullable=False),
    sa.Column('to_number', sa.String(length=32), nullable=False),
    sa.Column('callee_number', sa.String(length=32), nullable=True),
    sa.Column('callee_label', sa.String(length=200), nullable=True),
    sa.Column('callee_kind', sa.String(length=16), nullable=True),
    sa.Column('callee_result', sa.String(length=16), nullable=True),
    sa.Column('step_id', sa.Integer(), nullable=True),
    sa.Column('digits', sa.String(length=8), nullable=True),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.Column('answers_call_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('connected_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_s', sa.Integer(), nullable=True),
    sa.Column('left_queue', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['answers_call_id'], ['voice_calls.id'], name=op.f('fk_voice_calls_answers_call_id_voice_calls')),
    sa.ForeignKeyConstraint(['client_id'], ['clients.id'], name=op.f('fk_voice_calls_client_id_clients')),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_voice_calls_device_id_devices')),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_voice_calls_incident_id_incidents')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_voice_calls_user_id_users')),
    sa.ForeignKeyConstraint(['step_id'], ['incident_steps.id'], name=op.f('fk_voice_calls_step_id_incident_steps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_voice_calls')),
    sa.UniqueConstraint('call_sid', name=op.f('uq_voice_calls_call_sid'))
    )
    with op.batch_alter_table('voice_calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_voice_calls_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_voice_calls_incident_id'), ['incident_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_voice_calls_step_id'), ['step_id'], unique=False)

    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sim_number', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_devices_sim_number'), ['sim_number'], unique=False)

    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spoken_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_column('spoken_at')

    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_devices_sim_number'))
        batch_op.drop_column('sim_number')

    with op.batch_alter_table('voice_calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_voice_calls_step_id'))
        batch_op.drop_index(batch_op.f('ix_voice_calls_incident_id'))
        batch_op.drop_index(batch_op.f('ix_voice_calls_client_id'))

    op.drop_table('voice_calls')

