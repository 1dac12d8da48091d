"""retirements, and runs.rotate_by.

`retirements` keeps each credential due for retirement after its grace period, so a
restart never forgets one; `runs.rotate_by` is when a run's credential expires by itself.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("rotate_by", sa.DateTime(), nullable=True))
    op.create_table(
        "retirements",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("version_id", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("rotator", sa.String(64), nullable=False),
        sa.Column("target_digest", sa.String(64), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("secret", "version_id", name="uq_retirements_version"),
    )
    op.create_index("ix_retirements_secret", "retirements", ["secret"])
    op.create_index("ix_retirements_due_at", "retirements", ["due_at"])
    op.create_index("ix_retirements_status", "retirements", ["status"])


def downgrade() -> None:
    op.drop_index("ix_retirements_status", "retirements")
    op.drop_index("ix_retirements_due_at", "retirements")
    op.drop_index("ix_retirements_secret", "retirements")
    op.drop_table("retirements")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("rotate_by")
