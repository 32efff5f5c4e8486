"""artifacts.dtype and the fields table

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-28

Rows from 0001 get dtype '' (unknown); `skillforge reindex` fills it from the blobs' metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("dtype", sa.String(32), nullable=False, server_default=""))
    op.create_table(
        "fields",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("artifact_digest", sa.String(71), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("end", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_digest"], ["artifacts.digest"], name="fk_fields_artifact_digest_artifacts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_fields"),
    )
    op.create_index("ix_fields_artifact_digest", "fields", ["artifact_digest"])


def downgrade() -> None:
    op.drop_index("ix_fields_artifact_digest", table_name="fields")
    op.drop_table("fields")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("dtype")

