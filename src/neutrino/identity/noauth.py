"""Development mode: no tokens; headers say who you are.

- no ``X-Project-Id``: user ``admin`` (or ``X-User-Id``), project ``admin``, roles from ``X-Roles`` or admin;
- ``X-Project-Id: P``: that project, roles from ``X-Roles`` (comma separated) or ``member,reader``.

Roles imply lower ones as everywhere else (admin > member > reader). ``X-Tenant-Id`` is read as an old
spelling of ``X-Project-Id``.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.routing import BaseRoute

from neutrino.context import RequestContext
from neutrino.identity.store import expand_roles
from neutrino.identity.wire import header


def context_from_headers(headers: Mapping[str, str]) -> RequestContext:
    project = header(headers, "X-Project-Id") or header(headers, "X-Tenant-Id")
    listed = [r.strip() for r in header(headers, "X-Roles").split(",") if r.strip()]
    if project:
        roles = listed or ["member", "reader"]
        user = header(headers, "X-User-Id") or "noauth"
    else:
        project, roles, user = "admin", listed or ["admin"], header(headers, "X-User-Id") or "admin"
    return RequestContext(user_id=user, project_id=project, roles=expand_roles(roles),
                          user_name=header(headers, "X-User-Name") or user,
                          project_name=header(headers, "X-Project-Name") or project)


class NoAuth:
    routes: BaseRoute | None = None

    def bootstrap(self) -> None:
        return None

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext:
        return context_from_headers(headers)

    async def aclose(self) -> None:
        return None
