"""packs and pack_artifacts: which published packs this index pulled or published

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-01

A pack row is one `name@version` from one bucket root (`source`), with the index document it was
verified against; pack_artifacts lists the blobs of that pack that are present here. gc keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "packs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("index_digest", sa.String(71), nullable=False),
        sa.Column("index_json", sa.Text(), nullable=False),
        sa.Column("published", sa.String(64), nullable=False),
        sa.Column("recorded", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_packs"),
        sa.UniqueConstraint("source", "name", "version", name="uq_packs_source_name_version"),
    )
    op.create_table(
        "pack_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pack_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("skill", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["pack_id"], ["packs.id"], name="fk_pack_artifacts_pack_id_packs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_pack_artifacts"),
        sa.UniqueConstraint("pack_id", "digest", name="uq_pack_artifacts_pack_id_digest"),
    )
    op.create_index("ix_pack_artifacts_digest", "pack_artifacts", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_pack_artifacts_digest", table_name="pack_artifacts")
    op.drop_table("pack_artifacts")
    op.drop_table("packs")
