"""retention: removed_at on instances and outbound

Retention removes the files of finished, delivered instances but keeps their rows;
``removed_at`` records when, so nothing later tries to read a file that is gone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 02:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("instances", "outbound")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("removed_at")
