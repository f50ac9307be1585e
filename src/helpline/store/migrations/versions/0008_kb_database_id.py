"""The database's identity (kb_revision.database_id): drawn at random by the first process that starts on it.

The answer cache's keys carry it, so two databases whose services share one cache tenant (a staging and a
production store on one Redis with the default tenant) no longer serve each other's answers or take each other's
knowledge revisions for a restore. Empty until a process draws it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("kb_revision", sa.Column("database_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("kb_revision", "database_id")
