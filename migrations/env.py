"""Alembic environment for the skillforge index.

`Registry` builds the Alembic Config in code and hands over its open connection (already inside a
transaction, under a lock) as `config.attributes["connection"]`, so migrations use the same engine and
its SQLite settings. Run standalone (e.g. `alembic revision --autogenerate` with a config whose
`script_location` points here), it makes its own engine from `sqlalchemy.url` or the skillforge default.
`render_as_batch=True` because SQLite can alter tables only by recreating them.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from skillforge.registry.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from skillforge.config import db_url

    return db_url()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
