"""Cache audit: the similarity and matched question of semantic hits, and the provider cost a hit saved.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("cost_saved_usd", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cache_similarity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cache_matched", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("cache_matched")
        batch.drop_column("cache_similarity")
        batch.drop_column("cost_saved_usd")
