"""deferred messages: what a device sent past its budget, stored as it came and applied later

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 01:50:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('deferred_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('device_serial', sa.String(length=64), nullable=False),
    sa.Column('topic', sa.String(length=300), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deferred_messages'))
    )
    with op.batch_alter_table('deferred_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deferred_messages_device_serial'), ['device_serial'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('deferred_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deferred_messages_device_serial'))
    op.drop_table('deferred_messages')
