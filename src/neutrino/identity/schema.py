"""Tables of the builtin identity service (a Keystone v3 subset), on the shared metadata."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, String, Table, UniqueConstraint

from neutrino.db.schema import metadata

projects = Table(
    "identity_projects",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("domain_id", String(64), nullable=False, default="default"),
    Column("description", String(255), nullable=False, default=""),
    Column("enabled", Boolean, nullable=False, default=True),
    UniqueConstraint("domain_id", "name", name="uq_identity_projects_name"),
)

users = Table(
    "identity_users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("domain_id", String(64), nullable=False, default="default"),
    Column("password_hash", String(255), nullable=False),
    Column("default_project_id", String(64), nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    UniqueConstraint("domain_id", "name", name="uq_identity_users_name"),
)

roles = Table(
    "identity_roles",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
)

assignments = Table(
    "identity_assignments",
    metadata,
    Column("user_id", String(64), ForeignKey("identity_users.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", String(64), ForeignKey("identity_projects.id", ondelete="CASCADE"), primary_key=True),
    Column("role_id", String(64), ForeignKey("identity_roles.id", ondelete="CASCADE"), primary_key=True),
)

# Only a hash of each token is stored: a stolen database does not hand out working tokens.
tokens = Table(
    "identity_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("project_id", String(64), nullable=True),
    Column("methods", String(64), nullable=False),
    Column("audit_id", String(32), nullable=False),
    Column("issued_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

