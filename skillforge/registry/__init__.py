"""The SQL index over the blob store (SQLite by default, any SQLAlchemy URL); migrated on open."""

from skillforge.registry.registry import ArtifactRow, Registry, gc, verify_all

__all__ = ["ArtifactRow", "Registry", "gc", "verify_all"]
