"""SMS reply codes: a dispatch's reply must repeat its code; municipalities may allow plain replies

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 01:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('incident_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reply_code', sa.String(length=8), nullable=True))
    with op.batch_alter_table('municipalities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plain_sms_replies', sa.Boolean(), server_default=sa.false(),
                                      nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('municipalities', schema=None) as batch_op:
        batch_op.drop_column('plain_sms_replies')
    with op.batch_alter_table('incident_steps', schema=None) as batch_op:
        batch_op.drop_column('reply_code')
