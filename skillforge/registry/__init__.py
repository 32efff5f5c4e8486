"""The SQL index over the blob store (SQLite by default, any SQLAlchemy URL); migrated on open.

    engine.py       the URL, the engine, migrations to head
    models.py       the tables
    registry.py     Registry: skills, artifacts (adding one is a race with one winner), lookups
    packs.py        the packs this index pulled or published
    maintenance.py  the index against the store: reindex, gc (blobs and staging files), verify
"""

from skillforge.registry.maintenance import GC_GRACE_S, gc, reindex, verify_all
from skillforge.registry.registry import ArtifactRow, Registry

__all__ = ["GC_GRACE_S", "ArtifactRow", "Registry", "gc", "reindex", "verify_all"]
