"""skills, skill_versions and artifacts (no dtype column, no fields yet)

Revision ID: 0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "skills",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_skills"),
    )
    op.create_table(
        "skill_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("text_digest", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("created", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["name"], ["skills.name"], name="fk_skill_versions_name_skills"),
        sa.PrimaryKeyConstraint("id", name="pk_skill_versions"),
        sa.UniqueConstraint("name", "version", name="uq_skill_versions_name_version"),
    )
    op.create_table(
        "artifacts",
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("anchor_digest", sa.String(64), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["name"], ["skills.name"], name="fk_artifacts_name_skills"),
        sa.PrimaryKeyConstraint("digest", name="pk_artifacts"),
        sa.UniqueConstraint(
            "name", "version", "fingerprint", "anchor_digest",
            name="uq_artifacts_name_version_fingerprint_anchor_digest",
        ),
    )
    op.create_index("ix_artifacts_fingerprint", "artifacts", ["fingerprint"])


def downgrade() -> None:
    op.drop_index("ix_artifacts_fingerprint", table_name="artifacts")
    op.drop_table("artifacts")
    op.drop_table("skill_versions")
    op.drop_table("skills")
