"""integration keys scoped to a municipality; home-care workers owned by one

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 19:25:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    for table in ('integration_keys', 'home_care_workers'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('municipality_id', sa.Integer(), nullable=True))
            batch_op.create_index(batch_op.f(f'ix_{table}_municipality_id'), ['municipality_id'], unique=False)
            batch_op.create_foreign_key(batch_op.f(f'fk_{table}_municipality_id_municipalities'),
                                        'municipalities', ['municipality_id'], ['id'])


def downgrade() -> None:
    """Downgrade schema."""
    for table in ('home_care_workers', 'integration_keys'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f'fk_{table}_municipality_id_municipalities'), type_='foreignkey')
            batch_op.drop_index(batch_op.f(f'ix_{table}_municipality_id'))
            batch_op.drop_column('municipality_id')
