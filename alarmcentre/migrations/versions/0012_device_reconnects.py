"""devices: last (re)connection and last configuration publication, to resend a pending configuration

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 17:05:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('connected_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('config_published_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('config_published_at')
        batch_op.drop_column('connected_at')
