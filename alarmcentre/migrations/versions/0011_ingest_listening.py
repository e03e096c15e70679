"""ingest sessions: when each was last connected and last alive, for device supervision

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('ingest_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('connected_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('alive_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('ingest_sessions', schema=None) as batch_op:
        batch_op.drop_column('alive_at')
        batch_op.drop_column('connected_at')
