"""Data access of the builtin identity: rows in, frozen records out. No HTTP and no caching here.

Every function takes an open connection, so callers choose the transaction (``Database.read`` or
``Database.write``). There is one domain, ``default`` (named "Default"): it is fixed, not a row. Roles
follow Keystone's default implications: admin implies member, member implies reader.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NewType

from sqlalchemy import Connection, Row, delete, insert, select, update

from neutrino.identity.schema import assignments, projects, roles, tokens, users

UserId = NewType("UserId", str)
ProjectId = NewType("ProjectId", str)
RoleId = NewType("RoleId", str)

DEFAULT_DOMAIN_ID = "default"
DEFAULT_DOMAIN_NAME = "Default"
STANDARD_ROLES = ("admin", "member", "reader")
IMPLIED = {"admin": ("member", "reader"), "member": ("reader",)}


@dataclass(frozen=True, slots=True)
class User:
    id: UserId
    name: str
    domain_id: str
    enabled: bool
    default_project_id: ProjectId | None
    password_hash: str


@dataclass(frozen=True, slots=True)
class Project:
    id: ProjectId
    name: str
    domain_id: str
    description: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class Role:
    id: RoleId
    name: str


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_hash: str  # SHA-256 of the token
    user_id: UserId
    project_id: ProjectId | None
    methods: tuple[str, ...]
    audit_id: str
    issued_at: dt.datetime  # naive UTC, like every timestamp in the database
    expires_at: dt.datetime
    revoked: bool

    def valid_at(self, now: dt.datetime) -> bool:
        return not self.revoked and now < self.expires_at


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def expand_roles(names: Iterable[str]) -> frozenset[str]:
    found = {n.lower() for n in names}
    for name in list(found):
        found.update(IMPLIED.get(name, ()))
    return frozenset(found)


def _user(row: Row[Any]) -> User:
    default = ProjectId(row.default_project_id) if row.default_project_id else None
    return User(UserId(row.id), row.name, row.domain_id, row.enabled, default, row.password_hash)


def _project(row: Row[Any]) -> Project:
    return Project(ProjectId(row.id), row.name, row.domain_id, row.description, row.enabled)


def _token(row: Row[Any]) -> TokenRecord:
    return TokenRecord(row.token_hash, UserId(row.user_id), ProjectId(row.project_id) if row.project_id else None,
                       tuple(row.methods.split(",")), row.audit_id, row.issued_at, row.expires_at, row.revoked)


# -- lookups ---------------------------------------------------------------------------------------------
def get_user(conn: Connection, user_id: str) -> User | None:
    row = conn.execute(select(users).where(users.c.id == user_id)).first()
    return _user(row) if row is not None else None


def list_users(conn: Connection, name: str | None = None, domain_id: str | None = None) -> list[User]:
    stmt = select(users).order_by(users.c.name, users.c.id)
    if name is not None:
        stmt = stmt.where(users.c.name == name)
    if domain_id is not None:
        stmt = stmt.where(users.c.domain_id == domain_id)
    return [_user(r) for r in conn.execute(stmt)]


def get_project(conn: Connection, project_id: str) -> Project | None:
    row = conn.execute(select(projects).where(projects.c.id == project_id)).first()
    return _project(row) if row is not None else None


def list_projects(conn: Connection, name: str | None = None, domain_id: str | None = None) -> list[Project]:
    stmt = select(projects).order_by(projects.c.name, projects.c.id)
    if name is not None:
        stmt = stmt.where(projects.c.name == name)
    if domain_id is not None:
        stmt = stmt.where(projects.c.domain_id == domain_id)
    return [_project(r) for r in conn.execute(stmt)]


def user_projects(conn: Connection, user_id: str) -> list[Project]:
    """Projects on which the user holds any role."""
    held = select(assignments.c.project_id).where(assignments.c.user_id == user_id)
    return [_project(r) for r in conn.execute(select(projects).where(projects.c.id.in_(held))
                                             .order_by(projects.c.name))]


def list_roles(conn: Connection, name: str | None = None) -> list[Role]:
    stmt = select(roles).order_by(roles.c.name)
    if name is not None:
        stmt = stmt.where(roles.c.name == name)
    return [Role(RoleId(r.id), r.name) for r in conn.execute(stmt)]


def get_role(conn: Connection, role_id: str) -> Role | None:
    row = conn.execute(select(roles).where(roles.c.id == role_id)).first()
    return Role(RoleId(row.id), row.name) if row is not None else None


def assigned_roles(conn: Connection, user_id: str, project_id: str) -> list[Role]:
    """The roles granted directly (not implied) to the user on the project."""
    stmt = (select(roles).join(assignments, assignments.c.role_id == roles.c.id)
            .where(assignments.c.user_id == user_id, assignments.c.project_id == project_id)
            .order_by(roles.c.name))
    return [Role(RoleId(r.id), r.name) for r in conn.execute(stmt)]


def effective_roles(conn: Connection, user_id: str, project_id: str) -> list[Role]:
    """Granted plus implied roles, as Keystone lists them in a token."""
    names = expand_roles(r.name for r in assigned_roles(conn, user_id, project_id))
    if not names:
        return []
    return [Role(RoleId(r.id), r.name) for r in conn.execute(
        select(roles).where(roles.c.name.in_(sorted(names))).order_by(roles.c.name))]


def list_assignments(conn: Connection, user_id: str | None = None,
                     project_id: str | None = None) -> list[tuple[UserId, ProjectId, RoleId]]:
    stmt = select(assignments).order_by(assignments.c.project_id, assignments.c.user_id, assignments.c.role_id)
    if user_id is not None:
        stmt = stmt.where(assignments.c.user_id == user_id)
    if project_id is not None:
        stmt = stmt.where(assignments.c.project_id == project_id)
    return [(UserId(r.user_id), ProjectId(r.project_id), RoleId(r.role_id)) for r in conn.execute(stmt)]


def has_grant(conn: Connection, user_id: str, project_id: str, role_id: str) -> bool:
    return conn.execute(select(assignments.c.role_id).where(
        assignments.c.user_id == user_id, assignments.c.project_id == project_id,
        assignments.c.role_id == role_id)).first() is not None


def get_token(conn: Connection, token_hash: str) -> TokenRecord | None:
    row = conn.execute(select(tokens).where(tokens.c.token_hash == token_hash)).first()
    return _token(row) if row is not None else None


# -- changes ---------------------------------------------------------------------------------------------
def insert_user(conn: Connection, user: User) -> None:
    conn.execute(insert(users).values(id=user.id, name=user.name, domain_id=user.domain_id, enabled=user.enabled,
                                      default_project_id=user.default_project_id,
                                      password_hash=user.password_hash))


def insert_project(conn: Connection, project: Project) -> None:
    conn.execute(insert(projects).values(id=project.id, name=project.name, domain_id=project.domain_id,
                                         description=project.description, enabled=project.enabled))


def insert_role(conn: Connection, name: str) -> Role:
    role = Role(RoleId(new_id()), name)
    conn.execute(insert(roles).values(id=role.id, name=role.name))
    return role


def update_user(conn: Connection, user_id: str, **values: Any) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(**values))


def update_project(conn: Connection, project_id: str, **values: Any) -> None:
    conn.execute(update(projects).where(projects.c.id == project_id).values(**values))


def revoke_user_tokens(conn: Connection, user_id: str) -> None:
    conn.execute(update(tokens).where(tokens.c.user_id == user_id).values(revoked=True))


def delete_user(conn: Connection, user_id: str) -> None:
    revoke_user_tokens(conn, user_id)
    conn.execute(delete(users).where(users.c.id == user_id))


def delete_project(conn: Connection, project_id: str) -> None:
    conn.execute(update(tokens).where(tokens.c.project_id == project_id).values(revoked=True))
    conn.execute(delete(projects).where(projects.c.id == project_id))


def delete_role(conn: Connection, role_id: str) -> None:
    conn.execute(delete(roles).where(roles.c.id == role_id))


def grant(conn: Connection, user_id: str, project_id: str, role_id: str) -> None:
    if not has_grant(conn, user_id, project_id, role_id):
        conn.execute(insert(assignments).values(user_id=user_id, project_id=project_id, role_id=role_id))


def revoke_grant(conn: Connection, user_id: str, project_id: str, role_id: str) -> None:
    conn.execute(delete(assignments).where(assignments.c.user_id == user_id, assignments.c.project_id == project_id,
                                           assignments.c.role_id == role_id))


def insert_token(conn: Connection, record: TokenRecord) -> None:
    conn.execute(insert(tokens).values(
        token_hash=record.token_hash, user_id=record.user_id, project_id=record.project_id,
        methods=",".join(record.methods), audit_id=record.audit_id, issued_at=record.issued_at,
        expires_at=record.expires_at, revoked=False))


def revoke_token(conn: Connection, token_hash: str) -> None:
    conn.execute(update(tokens).where(tokens.c.token_hash == token_hash).values(revoked=True))


def purge_expired_tokens(conn: Connection, now: dt.datetime) -> int:
    return conn.execute(delete(tokens).where(tokens.c.expires_at < now)).rowcount
