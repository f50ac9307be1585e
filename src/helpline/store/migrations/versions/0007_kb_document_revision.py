"""Knowledge revisions: a counter every change moves on (kb_revision, one row) and the revision that wrote each
document's text, so versions are ordered across replicas and a copy of the knowledge knows how recent it is.

Documents stored before it are at revision 0 (older than any change written from now on).

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
    table = op.create_table(
        "kb_revision",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kb_revision"),
    )
    op.bulk_insert(table, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    op.drop_table("kb_revision")
    # In place on SQLite too (3.35+): a batch copy of kb_documents would cascade-delete its chunks.
    op.drop_column("kb_documents", "revision")
