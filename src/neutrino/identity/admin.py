"""Identity administration for the builtin service: users, projects, roles, grants, the one domain.

Shapes follow Keystone v3 closely enough for ``openstack user/project/role ...`` and openstacksdk's
identity proxy. Everything is admin-only, except that a user may list their own projects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from neutrino.identity import store
from neutrino.identity.passwords import hash_password
from neutrino.identity.store import Project, ProjectId, Role, User, UserId
from neutrino.identity.wire import (
    KeystoneError,
    bad_request,
    forbidden,
    json_body,
    json_response,
    not_found,
    route,
)

if TYPE_CHECKING:
    from neutrino.identity.builtin import BuiltinIdentity

T = TypeVar("T")
UNUSABLE_PASSWORD = "!"  # never a valid scrypt hash: a user created without a password cannot log in
MAX_PASSWORD = 4096  # Keystone's default max_password_length


def user_view(u: User, base: str) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "domain_id": u.domain_id, "enabled": u.enabled,
            "default_project_id": u.default_project_id, "password_expires_at": None, "options": {},
            "links": {"self": f"{base}/users/{u.id}"}}


def project_view(p: Project, base: str) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "domain_id": p.domain_id, "description": p.description,
            "enabled": p.enabled, "is_domain": False, "parent_id": p.domain_id, "tags": [], "options": {},
            "links": {"self": f"{base}/projects/{p.id}"}}


def role_view(r: Role, base: str) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "domain_id": None, "description": None, "options": {},
            "links": {"self": f"{base}/roles/{r.id}"}}


def domain_view(base: str) -> dict[str, Any]:
    return {"id": store.DEFAULT_DOMAIN_ID, "name": store.DEFAULT_DOMAIN_NAME, "description": "The default domain",
            "enabled": True, "tags": [], "options": {}, "links": {"self": f"{base}/domains/default"}}


def collection(kind: str, items: list[dict[str, Any]], base: str) -> dict[str, Any]:
    return {kind: items, "links": {"self": f"{base}/{kind}", "next": None, "previous": None}}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _invalid(kind: str, key: str, expected: str, value: Any) -> KeystoneError:
    return bad_request(f"Invalid input for field '{key}' of {kind}: expected {expected}, got {_json_type(value)}.")


def _string(body: dict[str, Any], key: str, kind: str, *, max_len: int = 255, blank: bool = True) -> str:
    """``body[key]`` as a string of at most ``max_len`` characters (not blank unless ``blank``); else 400."""
    value = body.get(key)
    if not isinstance(value, str) or len(value) > max_len or (not blank and not value.strip()):
        raise _invalid(kind, key, f"a {'' if blank else 'non-blank '}string of at most {max_len} characters", value)
    return value


def _optional_string(body: dict[str, Any], key: str, kind: str, *, max_len: int = 255) -> str | None:
    if body.get(key) is None:
        return None
    try:
        return _string(body, key, kind, max_len=max_len)
    except KeystoneError:
        raise _invalid(kind, key, f"a string of at most {max_len} characters or null", body[key]) from None


def _boolean(body: dict[str, Any], key: str, kind: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise _invalid(kind, key, "true or false", value)
    return value


def _domain_of(body: dict[str, Any], kind: str) -> str:
    domain = _optional_string(body, "domain_id", kind, max_len=64) or store.DEFAULT_DOMAIN_ID
    if domain != store.DEFAULT_DOMAIN_ID:
        raise not_found("domain", domain)
    return store.DEFAULT_DOMAIN_ID


def _name(body: dict[str, Any], kind: str) -> str:
    return _string(body, "name", kind, blank=False)


def _user_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The user attributes present in ``body``, type-checked: name, enabled, default_project_id, password."""
    values: dict[str, Any] = {}
    if "name" in body:
        values["name"] = _name(body, "user")
    if "enabled" in body:
        values["enabled"] = _boolean(body, "enabled", "user")
    if "default_project_id" in body:
        values["default_project_id"] = _optional_string(body, "default_project_id", "user", max_len=64) or None
    if "password" in body:
        values["password"] = _optional_string(body, "password", "user", max_len=MAX_PASSWORD)
    return values


def _project_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The project attributes present in ``body``, type-checked: name, description, enabled."""
    values: dict[str, Any] = {}
    if "name" in body:
        values["name"] = _name(body, "project")
    if "description" in body:
        values["description"] = _optional_string(body, "description", "project") or ""
    if "enabled" in body:
        values["enabled"] = _boolean(body, "enabled", "project")
    if "is_domain" in body and _boolean(body, "is_domain", "project"):
        raise bad_request("Projects acting as domains are not supported.")
    return values


def _must(value: T | None, kind: str, ref: str) -> T:
    if value is None:
        raise not_found(kind, ref)
    return value


class Admin:
    """The handlers; each runs its database work in one transaction on a worker thread."""

    def __init__(self, identity: BuiltinIdentity) -> None:
        self.identity = identity
        self.db = identity.db

    async def read(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.db.read() as conn:
                return fn(conn)
        return await run_in_threadpool(run)

    async def write(self, fn: Callable[[Connection], T], what: str = "") -> T:
        try:
            result = await run_in_threadpool(self.db.write, fn, attempts=1)
        except IntegrityError:
            raise KeystoneError(409, f"Conflict occurred attempting to store {what} - Duplicate entry.") from None
        self.identity.forget_all()
        return result

    def guarded(self, fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            await self.identity.admin_caller(request)
            return await fn(request)
        return run

    # -- users -------------------------------------------------------------------------------------------
    async def list_users(self, request: Request) -> Response:
        q, base = request.query_params, self.identity.v3_url(request)
        found = await self.read(lambda c: store.list_users(c, q.get("name"), q.get("domain_id")))
        return json_response(collection("users", [user_view(u, base) for u in found], base))

    async def create_user(self, request: Request) -> Response:
        body, base = await json_body(request, "user"), self.identity.v3_url(request)
        fields = _user_fields(body)
        if "name" not in fields:
            fields["name"] = _name(body, "user")  # the 400 for a missing name
        password = fields.get("password")
        hashed = await run_in_threadpool(hash_password, password) if password is not None else UNUSABLE_PASSWORD
        default = fields.get("default_project_id")
        user = User(UserId(store.new_id()), fields["name"], _domain_of(body, "user"), fields.get("enabled", True),
                    ProjectId(default) if default else None, hashed)

        def run(conn: Connection) -> User:
            if user.default_project_id:
                _must(store.get_project(conn, user.default_project_id), "project", user.default_project_id)
            store.insert_user(conn, user)
            return user

        return json_response({"user": user_view(await self.write(run, "user"), base)}, 201)

    async def show_user(self, request: Request) -> Response:
        ref, base = request.path_params["id"], self.identity.v3_url(request)
        found = _must(await self.read(lambda c: store.get_user(c, ref)), "user", ref)
        return json_response({"user": user_view(found, base)})

    async def update_user(self, request: Request) -> Response:
        ref, base = request.path_params["id"], self.identity.v3_url(request)
        values = _user_fields(await json_body(request, "user"))
        password = values.pop("password", None)
        if password is not None:
            values["password_hash"] = await run_in_threadpool(hash_password, password)

        def run(conn: Connection) -> User:
            _must(store.get_user(conn, ref), "user", ref)
            default = values.get("default_project_id")
            if default:
                _must(store.get_project(conn, default), "project", default)
            if values:
                store.update_user(conn, ref, **values)
            if "password_hash" in values or values.get("enabled") is False:
                store.revoke_user_tokens(conn, ref)  # as Keystone does on a password change
            return _must(store.get_user(conn, ref), "user", ref)

        return json_response({"user": user_view(await self.write(run, "user"), base)})

    async def delete_user(self, request: Request) -> Response:
        ref = request.path_params["id"]

        def run(conn: Connection) -> None:
            _must(store.get_user(conn, ref), "user", ref)
            store.delete_user(conn, ref)

        await self.write(run)
        return Response(status_code=204)

    async def user_projects(self, request: Request) -> Response:
        ref, base = request.path_params["id"], self.identity.v3_url(request)
        caller = await self.identity.caller(request)
        if not caller.is_admin and caller.user_id != ref:
            raise forbidden()
        found = await self.read(lambda c: store.user_projects(c, ref))
        return json_response(collection("projects", [project_view(p, base) for p in found], base))

    # -- projects ----------------------------------------------------------------------------------------
    async def list_projects(self, request: Request) -> Response:
        q, base = request.query_params, self.identity.v3_url(request)
        found = await self.read(lambda c: store.list_projects(c, q.get("name"), q.get("domain_id")))
        return json_response(collection("projects", [project_view(p, base) for p in found], base))

    async def create_project(self, request: Request) -> Response:
        body, base = await json_body(request, "project"), self.identity.v3_url(request)
        fields = _project_fields(body)
        if "name" not in fields:
            fields["name"] = _name(body, "project")  # the 400 for a missing name
        project = Project(ProjectId(store.new_id()), fields["name"], _domain_of(body, "project"),
                          fields.get("description", ""), fields.get("enabled", True))

        def run(conn: Connection) -> Project:
            store.insert_project(conn, project)
            return project

        return json_response({"project": project_view(await self.write(run, "project"), base)}, 201)

    async def show_project(self, request: Request) -> Response:
        ref, base = request.path_params["id"], self.identity.v3_url(request)
        found = _must(await self.read(lambda c: store.get_project(c, ref)), "project", ref)
        return json_response({"project": project_view(found, base)})

    async def update_project(self, request: Request) -> Response:
        ref, base = request.path_params["id"], self.identity.v3_url(request)
        values = _project_fields(await json_body(request, "project"))

        def run(conn: Connection) -> Project:
            _must(store.get_project(conn, ref), "project", ref)
            if values:
                store.update_project(conn, ref, **values)
            return _must(store.get_project(conn, ref), "project", ref)

        return json_response({"project": project_view(await self.write(run, "project"), base)})

    async def delete_project(self, request: Request) -> Response:
        ref = request.path_params["id"]

        def run(conn: Connection) -> None:
            _must(store.get_project(conn, ref), "project", ref)
            store.delete_project(conn, ref)

        await self.write(run)
        return Response(status_code=204)

    # -- roles and grants ----------------------------------------------------------------------------------
    async def list_roles(self, request: Request) -> Response:
        base = self.identity.v3_url(request)
        found = await self.read(lambda c: store.list_roles(c, request.query_params.get("name")))
        return json_response(collection("roles", [role_view(r, base) for r in found], base))

    async def create_role(self, request: Request) -> Response:
        body, base = await json_body(request, "role"), self.identity.v3_url(request)
        name = _name(body, "role")
        role = await self.write(lambda c: store.insert_role(c, name), "role")
        return json_response({"role": role_view(role, base)}, 201)

    async def show_role(self, request: Request) -> Response:
        ref, base = request.path_params["id"], self.identity.v3_url(request)
        found = _must(await self.read(lambda c: store.get_role(c, ref)), "role", ref)
        return json_response({"role": role_view(found, base)})

    async def delete_role(self, request: Request) -> Response:
        ref = request.path_params["id"]

        def run(conn: Connection) -> None:
            role = _must(store.get_role(conn, ref), "role", ref)
            if role.name in store.STANDARD_ROLES:
                raise KeystoneError(403, f"The standard role {role.name} cannot be deleted.")
            store.delete_role(conn, ref)

        await self.write(run)
        return Response(status_code=204)

    async def grant(self, request: Request) -> Response:
        p, u, r = (request.path_params[k] for k in ("project", "user", "role"))

        def run(conn: Connection) -> bool:
            _must(store.get_project(conn, p), "project", p)
            _must(store.get_user(conn, u), "user", u)
            _must(store.get_role(conn, r), "role", r)
            exists = store.has_grant(conn, u, p, r)
            if request.method == "PUT":
                store.grant(conn, u, p, r)
            elif request.method == "DELETE":
                if not exists:
                    raise not_found("role assignment", f"{r} of user {u} on project {p}")
                store.revoke_grant(conn, u, p, r)
            return exists

        exists = await (self.write(run) if request.method in ("PUT", "DELETE") else self.read(run))
        if request.method == "HEAD" and not exists:
            raise not_found("role assignment", f"{r} of user {u} on project {p}")
        return Response(status_code=204)

    async def grants_of(self, request: Request) -> Response:
        p, u, base = request.path_params["project"], request.path_params["user"], self.identity.v3_url(request)
        found = await self.read(lambda c: store.assigned_roles(c, u, p))
        return json_response(collection("roles", [role_view(r, base) for r in found], base))

    async def role_assignments(self, request: Request) -> Response:
        q, base = request.query_params, self.identity.v3_url(request)
        rows = await self.read(lambda c: store.list_assignments(c, q.get("user.id"), q.get("scope.project.id")))
        role = q.get("role.id")
        items = [{"role": {"id": r}, "user": {"id": u}, "scope": {"project": {"id": p}},
                  "links": {"assignment": f"{base}/projects/{p}/users/{u}/roles/{r}"}}
                 for u, p, r in rows if role is None or r == role]
        return json_response({"role_assignments": items,
                              "links": {"self": f"{base}/role_assignments", "next": None, "previous": None}})

    # -- the domain --------------------------------------------------------------------------------------------
    async def list_domains(self, request: Request) -> Response:
        base, name = self.identity.v3_url(request), request.query_params.get("name")
        found = [domain_view(base)] if name in (None, store.DEFAULT_DOMAIN_NAME) else []
        return json_response(collection("domains", found, base))

    async def show_domain(self, request: Request) -> Response:
        ref = request.path_params["id"]
        if ref not in (store.DEFAULT_DOMAIN_ID, store.DEFAULT_DOMAIN_NAME):
            raise not_found("domain", ref)
        return json_response({"domain": domain_view(self.identity.v3_url(request))})


def admin_routes(identity: BuiltinIdentity) -> list[BaseRoute]:
    a = Admin(identity)
    g = a.guarded
    return [
        route("/v3/users", {"GET": g(a.list_users), "POST": g(a.create_user)}),
        route("/v3/users/{id}", {"GET": g(a.show_user), "PATCH": g(a.update_user), "DELETE": g(a.delete_user)}),
        route("/v3/users/{id}/projects", {"GET": a.user_projects}),
        route("/v3/projects", {"GET": g(a.list_projects), "POST": g(a.create_project)}),
        route("/v3/projects/{id}", {"GET": g(a.show_project), "PATCH": g(a.update_project),
                                    "DELETE": g(a.delete_project)}),
        route("/v3/projects/{project}/users/{user}/roles", {"GET": g(a.grants_of)}),
        route("/v3/projects/{project}/users/{user}/roles/{role}", {"PUT": g(a.grant), "HEAD": g(a.grant),
                                                                    "DELETE": g(a.grant)}),
        route("/v3/roles", {"GET": g(a.list_roles), "POST": g(a.create_role)}),
        route("/v3/roles/{id}", {"GET": g(a.show_role), "DELETE": g(a.delete_role)}),
        route("/v3/role_assignments", {"GET": g(a.role_assignments)}),
        route("/v3/domains", {"GET": g(a.list_domains)}),
        route("/v3/domains/{id}", {"GET": g(a.show_domain)}),
    ]
