"""Slot claims: one row per (secret, schedule slot), so a slot rotates once.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slot_claims",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("slot", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("secret", "slot", name="uq_slot_claims_secret_slot"),
    )


def downgrade() -> None:
    op.drop_table("slot_claims")
