"""Alembic migrations for the skillforge index, shipped as `skillforge._migrations`.

`skillforge.registry.Registry` runs them on open; nobody needs to call Alembic by hand.
"""
