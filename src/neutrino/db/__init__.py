"""Storage: the schema (``schema``), the engine and transactions (``engine``), Alembic migrations.

Every service call runs in exactly one transaction from ``Database.read()`` or ``Database.write()``.
Writes are serialized where the backend needs it (SQLite: BEGIN IMMEDIATE behind one in-process lock),
so allocation code can read-then-insert without races; PostgreSQL writes lock the rows they allocate from.
"""
