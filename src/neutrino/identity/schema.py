"""Tables of the builtin identity service (a Keystone v3 subset), on the shared metadata.

Only a SHA-256 of each token is stored, so a copy of the database hands out no working token; a token
row is the whole truth about it (scope, expiry, revocation), which is what lets tokens and revocations
survive a restart and be shared by several API servers on one PostgreSQL database.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Index, String, Table, UniqueConstraint

from neutrino.db.schema import metadata

ID = String(64)

domains = Table(
    "identity_domains",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("description", String(255), nullable=False, default=""),
    Column("enabled", Boolean, nullable=False, default=True),
)

projects = Table(
    "identity_projects",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("domain_id", ID, ForeignKey("identity_domains.id"), nullable=False),
    Column("description", String(255), nullable=False, default=""),
    Column("enabled", Boolean, nullable=False, default=True),
    UniqueConstraint("domain_id", "name", name="uq_identity_projects_name"),
)

users = Table(
    "identity_users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("domain_id", ID, ForeignKey("identity_domains.id"), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("default_project_id", ID, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    UniqueConstraint("domain_id", "name", name="uq_identity_users_name"),
)

roles = Table(
    "identity_roles",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
)

assignments = Table(
    "identity_assignments",
    metadata,
    Column("user_id", ID, ForeignKey("identity_users.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", ID, ForeignKey("identity_projects.id", ondelete="CASCADE"), primary_key=True),
    Column("role_id", ID, ForeignKey("identity_roles.id", ondelete="CASCADE"), primary_key=True),
)

tokens = Table(
    "identity_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", ID, nullable=False),
    Column("project_id", ID, nullable=True),
    Column("methods", String(64), nullable=False),
    Column("audit_id", String(32), nullable=False),
    # The audit id of the token this one was re-scoped from (Keystone's audit chain), else NULL.
    Column("audit_chain_id", String(32), nullable=True),
    Column("issued_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Index("ix_identity_tokens_user", "user_id"),
)
