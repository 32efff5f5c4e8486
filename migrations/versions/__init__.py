"""Alembic revisions, one file each, in a single line of history (one head; a test checks it)."""
