"""Identity administration for the builtin service: users, projects, roles, role assignments, domains.

Shapes follow Keystone v3 so ``openstack user/project/role …`` and openstacksdk's identity proxy work.
Everything here is admin-only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from neutrino.identity.passwords import hash_password
from neutrino.identity.schema import assignments, projects, roles, users

if TYPE_CHECKING:
    from neutrino.identity.builtin import BuiltinIdentity

DOMAIN = {"id": "default", "name": "Default", "description": "The default domain", "enabled": True,
          "tags": [], "options": {}}


def _project(row: Any, base: str) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "domain_id": row.domain_id, "description": row.description,
            "enabled": row.enabled, "is_domain": False, "parent_id": row.domain_id, "tags": [], "options": {},
            "links": {"self": f"{base}/projects/{row.id}"}}


def _user(row: Any, base: str) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "domain_id": row.domain_id, "enabled": row.enabled,
            "default_project_id": row.default_project_id, "password_expires_at": None, "options": {},
            "links": {"self": f"{base}/users/{row.id}"}}


def _role(row: Any, base: str) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "domain_id": None, "description": None, "options": {},
            "links": {"self": f"{base}/roles/{row.id}"}}


def admin_routes(identity: BuiltinIdentity) -> list[BaseRoute]:
    from neutrino.identity.builtin import KeystoneError, _json, error

    base = f"{identity.public}/identity/v3"
    kinds: dict[str, tuple[Table, Callable[[Any, str], dict[str, Any]], str]] = {
        "projects": (projects, _project, "project"),
        "users": (users, _user, "user"),
        "roles": (roles, _role, "role"),
    }

    def guarded(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            try:
                caller = await identity.validate(request.headers.get("x-auth-token", ""))
                if caller is None:
                    raise KeystoneError(401, "Unauthorized", "The request you have made requires authentication.")
                if not caller.is_admin:
                    raise KeystoneError(403, "Forbidden", "You are not authorized to perform the requested action.")
                result: Response = await fn(request)
                return result
            except KeystoneError as exc:
                return error(exc)
        return run

    def lookup(conn: Connection, table: Table, ref: str) -> Any:
        row = conn.execute(select(table).where(table.c.id == ref)).first()
        if row is None:
            raise KeystoneError(404, "Not Found", f"Could not find {table.name.removeprefix('identity_')[:-1]}: {ref}.")
        return row

    async def collection(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in kinds:
            raise KeystoneError(404, "Not Found", "The resource could not be found.")
        table, view, single = kinds[kind]
        if request.method == "GET":
            def listed() -> list[dict[str, Any]]:
                stmt = select(table).order_by(table.c.name)
                if "name" in request.query_params:
                    stmt = stmt.where(table.c.name == request.query_params["name"])
                with identity.db.read() as conn:
                    return [view(r, base) for r in conn.execute(stmt)]
            return _json({kind: await run_in_threadpool(listed),
                          "links": {"self": f"{base}/{kind}", "next": None, "previous": None}})
        try:
            body = orjson.loads(await request.body())[single]
            name = str(body["name"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise KeystoneError(400, "Bad Request", f"Expecting to find {single} name in request.") from None
        values: dict[str, Any] = {"id": uuid.uuid4().hex, "name": name}
        if kind == "projects":
            values.update(domain_id="default", description=str(body.get("description", "")),
                          enabled=bool(body.get("enabled", True)))
        elif kind == "users":
            values.update(domain_id="default", password_hash=hash_password(str(body.get("password", ""))),
                          default_project_id=body.get("default_project_id"), enabled=bool(body.get("enabled", True)))

        def create(conn: Connection) -> dict[str, Any]:
            conn.execute(insert(table).values(**values))
            return view(conn.execute(select(table).where(table.c.id == values["id"])).one(), base)

        try:
            created = await run_in_threadpool(identity.db.write, create, attempts=1)
        except IntegrityError:
            raise KeystoneError(409, "Conflict", f"Duplicate entry found with name {name}.") from None
        return _json({single: created}, 201)

    async def member(request: Request) -> Response:
        kind, ref = request.path_params["kind"], request.path_params["id"]
        if kind not in kinds:
            raise KeystoneError(404, "Not Found", "The resource could not be found.")
        table, view, single = kinds[kind]
        if request.method == "GET":
            def shown() -> dict[str, Any]:
                with identity.db.read() as conn:
                    return view(lookup(conn, table, ref), base)
            return _json({single: await run_in_threadpool(shown)})

        def remove(conn: Connection) -> None:
            lookup(conn, table, ref)
            conn.execute(delete(table).where(table.c.id == ref))

        await run_in_threadpool(identity.db.write, remove)
        return Response(status_code=204)

    async def grant(request: Request) -> Response:
        p, u, r = (request.path_params[k] for k in ("project", "user", "role"))

        def run(conn: Connection) -> None:
            lookup(conn, projects, p), lookup(conn, users, u), lookup(conn, roles, r)
            exists = conn.execute(select(assignments).where(assignments.c.project_id == p,
                                                            assignments.c.user_id == u,
                                                            assignments.c.role_id == r)).first()
            if request.method == "PUT" and exists is None:
                conn.execute(insert(assignments).values(project_id=p, user_id=u, role_id=r))
            elif request.method == "DELETE":
                conn.execute(delete(assignments).where(assignments.c.project_id == p, assignments.c.user_id == u,
                                                       assignments.c.role_id == r))
            elif request.method == "HEAD" and exists is None:
                raise KeystoneError(404, "Not Found", "Could not find role assignment.")

        await run_in_threadpool(identity.db.write, run)
        identity._cache.clear()  # roles changed: cached contexts are stale
        return Response(status_code=204)

    async def domains(request: Request) -> Response:
        name = request.query_params.get("name")
        found = [DOMAIN] if name in (None, "Default") else []
        return _json({"domains": found, "links": {"self": f"{base}/domains", "next": None, "previous": None}})

    async def domain(request: Request) -> Response:
        if request.path_params["id"] not in ("default", "Default"):
            raise KeystoneError(404, "Not Found", f"Could not find domain: {request.path_params['id']}.")
        return _json({"domain": DOMAIN})

    return [
        Route("/v3/domains", guarded(domains), methods=["GET"]),
        Route("/v3/domains/{id}", guarded(domain), methods=["GET"]),
        Route("/v3/projects/{project}/users/{user}/roles/{role}", guarded(grant), methods=["PUT", "HEAD", "DELETE"]),
        Route("/v3/{kind}", guarded(collection), methods=["GET", "POST"]),
        Route("/v3/{kind}/{id}", guarded(member), methods=["GET", "DELETE"]),
    ]
