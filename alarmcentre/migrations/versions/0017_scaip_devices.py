"""SCAIP devices: controller id and encrypted digest password

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 14:40:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0017'
down_revision: Union[str, Sequence[str], None] = '0016'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scaip_cid', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('scaip_password_ciphertext', sa.Text(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_devices_scaip_cid'), ['scaip_cid'])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_devices_scaip_cid'), type_='unique')
        batch_op.drop_column('scaip_password_ciphertext')
        batch_op.drop_column('scaip_cid')
