"""The initial schema: runs, step events, leases, stored versions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("slot", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("version_id", sa.String(128)),
        sa.Column("error", sa.Text()),
    )
    op.create_index("ix_runs_secret", "runs", ["secret"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "step_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("duration_ms", sa.Integer()),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_step_events_run_id", "step_events", ["run_id"])
    op.create_table(
        "leases",
        sa.Column("secret", sa.String(255), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("fence", sa.Integer(), nullable=False),
    )
    op.create_table(
        "stored_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=False, unique=True),
        sa.Column("token", sa.String(128), nullable=False),
        sa.Column("stage", sa.String(16)),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("path", "stage", name="uq_stored_versions_path_stage"),
        sa.UniqueConstraint("path", "token", name="uq_stored_versions_path_token"),
    )
    op.create_index("ix_stored_versions_path", "stored_versions", ["path"])


def downgrade() -> None:
    for table in ("stored_versions", "leases", "step_events", "runs"):
        op.drop_table(table)
