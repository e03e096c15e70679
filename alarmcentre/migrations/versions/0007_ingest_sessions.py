"""ingest sessions: the ingest's memory of its persistent broker sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 08:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('ingest_sessions',
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('established_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lost_count', sa.Integer(), nullable=False),
    sa.Column('last_lost_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('client_id', name=op.f('pk_ingest_sessions'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('ingest_sessions')
