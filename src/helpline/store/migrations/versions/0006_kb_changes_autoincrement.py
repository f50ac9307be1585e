"""On SQLite, kb_changes never reuses an id (AUTOINCREMENT): a drainer settling the ids it read could otherwise
delete a change written since under the id of one it settled. PostgreSQL and MariaDB never reuse one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "kb_changes", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ) as batch:
        batch.alter_column("id", autoincrement=True)  # the copy keeps every row and its id


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)
