"""Who is asking: the request context every service call receives.

Built by the identity layer (builtin tokens, external Keystone, or noauth) and consumed by policy checks
in the services. Roles follow Keystone's defaults: ``admin`` > ``member`` > ``reader``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RequestContext:
    user_id: str
    project_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    user_name: str = ""
    project_name: str = ""
    auth_token: str = ""
    request_id: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_write(self) -> bool:
        """A reader may only look."""
        return self.is_admin or "member" in self.roles

    @classmethod
    def admin(cls, project_id: str = "admin") -> RequestContext:
        """The context of internal work (agents, setup) that is not a user's request."""
        return cls(user_id="neutrino", project_id=project_id, roles=frozenset({"admin", "member", "reader"}))
