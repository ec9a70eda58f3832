"""drift window index: instances by model and finish time

Drift watch reads a model's latest results on every operator page view and /metrics scrape;
without an index it sorted every finished row each time (about 0.9 s at 500,000 rows on
SQLite, and rows are kept after retention, so the count only grows).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 00:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_instances_model_finished", "instances", ["model", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_instances_model_finished", table_name="instances")
