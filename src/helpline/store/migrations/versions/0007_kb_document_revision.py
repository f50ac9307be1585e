"""A document's revision: the id of the change that wrote its text, so versions are ordered across replicas.

Documents stored before it start at revision 0 (older than any change written from now on).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("kb_documents", sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    # In place on SQLite too (3.35+): a batch copy of kb_documents would cascade-delete its chunks.
    op.drop_column("kb_documents", "revision")
