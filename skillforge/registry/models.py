"""The SQL index's tables. The blobs are the truth; these rows only make lookups fast.

Everything here can be rebuilt from blobs (`Registry.reindex`), which is why artifacts carry their
whole metadata JSON. Constraint names follow one naming convention so that Alembic batch migrations
on SQLite (which recreate tables) can find every constraint by name. Times are ISO-8601 strings:
artifacts keep the compile time from their metadata, so a rebuilt index equals the original.

Schema changes go through a new Alembic revision in migrations/versions/ (a `packs` table is expected
to arrive as the third); `tests/test_registry.py` checks the models and the migrations agree.
Packs (revision 0003) record which published packs this index has pulled or published, and which
blobs each names; `Registry.referenced_digests` counts those blobs, so `gc` keeps them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Skill(Base):
    """A skill name seen here (by a manifest or an artifact)."""

    __tablename__ = "skills"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[str] = mapped_column(String(64))


class SkillVersion(Base):
    """name@version -> the digest of its text; a version once registered never changes its text."""

    __tablename__ = "skill_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), ForeignKey("skills.name"))
    version: Mapped[str] = mapped_column(String(128))
    text_digest: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text)
    manifest: Mapped[str] = mapped_column(Text)
    created: Mapped[str] = mapped_column(String(64))


class Artifact(Base):
    """One compiled artifact blob: a skill version for one model fingerprint and anchor."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("name", "version", "fingerprint", "anchor_digest"),
    )

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), ForeignKey("skills.name"))
    version: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str] = mapped_column(String(255), index=True)
    anchor_digest: Mapped[str] = mapped_column(String(64))
    tokens: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    dtype: Mapped[str] = mapped_column(String(32), server_default="")
    meta: Mapped[str] = mapped_column(Text)
    created: Mapped[str] = mapped_column(String(64))

    fields: Mapped[list[Field]] = relationship(
        back_populates="artifact", cascade="all, delete-orphan", passive_deletes=True, order_by="Field.id"
    )


class Field(Base):
    """Where a field's value sits in an artifact's tokens, so edits can be planned by query."""

    __tablename__ = "fields"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_digest: Mapped[str] = mapped_column(
        String(71), ForeignKey("artifacts.digest", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)

    artifact: Mapped[Artifact] = relationship(back_populates="fields")


class Pack(Base):
    """A pack version this index knows, from one bucket root (`source`), with its verified index."""

    __tablename__ = "packs"
    __table_args__ = (UniqueConstraint("source", "name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    index_digest: Mapped[str] = mapped_column(String(71))
    index_json: Mapped[str] = mapped_column(Text)
    published: Mapped[str] = mapped_column(String(64))
    recorded: Mapped[str] = mapped_column(String(64))

    artifacts: Mapped[list[PackArtifact]] = relationship(
        back_populates="pack", cascade="all, delete-orphan", passive_deletes=True, order_by="PackArtifact.id"
    )


class PackArtifact(Base):
    """One blob of a pack that is present here (a pull for one model records only that model's)."""

    __tablename__ = "pack_artifacts"
    __table_args__ = (UniqueConstraint("pack_id", "digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pack_id: Mapped[int] = mapped_column(Integer, ForeignKey("packs.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(71), index=True)
    skill: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)

    pack: Mapped[Pack] = relationship(back_populates="artifacts")
