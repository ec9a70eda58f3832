"""drift: input statistics on instances (rows, columns, photometric, manufacturer)

Drift watch compares the last classified instances with the bundle's reference; these
columns keep the statistics it compares besides the body part (device and geometry only).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rows", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("columns", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("photometric", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("manufacturer", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        for column in ("manufacturer", "photometric", "columns", "rows"):
            batch_op.drop_column(column)
