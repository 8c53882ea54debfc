"""Development mode: no tokens. ``X-Project-Id`` (and ``X-Roles``) say who you are; otherwise admin."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.routing import BaseRoute

from neutrino.context import RequestContext


class NoAuth:
    routes: BaseRoute | None = None

    def bootstrap(self) -> None:
        return None

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext:
        project = headers.get("x-project-id")
        if not project:
            return RequestContext(user_id="admin", project_id="admin",
                                  roles=frozenset({"admin", "member", "reader"}))
        roles = headers.get("x-roles", "member,reader")
        return RequestContext(user_id=headers.get("x-user-id", "noauth"), project_id=project,
                              roles=frozenset(r.strip().lower() for r in roles.split(",") if r.strip()))

    async def aclose(self) -> None:
        return None
