"""Alembic environment: migrations run on the connection the server hands over (or the URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import neutrino.identity.schema  # noqa: F401  (registers identity tables on the metadata)
from neutrino.db.schema import metadata

config = context.config
target_metadata = metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
