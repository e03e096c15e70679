"""devices: SIA DC-09 account and encrypted AES key

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 10:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dc09_account', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('dc09_key_ciphertext', sa.Text(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_devices_dc09_account'), ['dc09_account'])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_devices_dc09_account'), type_='unique')
        batch_op.drop_column('dc09_key_ciphertext')
        batch_op.drop_column('dc09_account')
