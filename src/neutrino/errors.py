"""The one exception hierarchy of neutrino.

API errors carry the Neutron fault type, the HTTP status and a message; the HTTP layer turns any of
them into ``{"NeutronError": {"type", "message", "detail"}}``. Kernel errors are translated from errno
at the dataplane boundary and carry the object and namespace they concern.

    NeutrinoError
    ├── ApiError (status, type)
    │   ├── BadRequest (400) ── InvalidInput, Unrecognized..., OverlappingSubnet...
    │   ├── Unauthorized (401)
    │   ├── Forbidden (403) ── PolicyNotAuthorized
    │   ├── NotFound (404) ── NetworkNotFound, SubnetNotFound, PortNotFound, ...
    │   ├── Conflict (409) ── InUse, IpAddressAlreadyAllocated, IpAddressGenerationFailure, OverQuota,...
    │   ├── PreconditionFailed (412) ── RevisionNumberConstraintFailed
    │   └── RequestTooLarge (413)
    ├── ConfigError
    ├── ClientError (status): neutrino's CLI and agents calling the server
    └── KernelError (object, namespace, errno)
"""

from __future__ import annotations


class NeutrinoError(Exception):
    """Base of every error neutrino raises on purpose."""


class ConfigError(NeutrinoError):
    """The configuration file or an environment override is wrong."""


class ApiError(NeutrinoError):
    status: int = 500
    type: str = "NeutronError"

    def __init__(self, message: str, *, type: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if type is not None:
            self.type = type

    def body(self) -> dict[str, dict[str, str]]:
        return {"NeutronError": {"type": self.type, "message": self.message, "detail": self.detail}}


class BadRequest(ApiError):
    status = 400
    type = "BadRequest"


class InvalidInput(BadRequest):
    type = "InvalidInput"

    def __init__(self, message: str) -> None:
        super().__init__(f"Invalid input for operation: {message}.")


class Unauthorized(ApiError):
    status = 401
    type = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    type = "Forbidden"


class PolicyNotAuthorized(Forbidden):
    type = "PolicyNotAuthorized"

    def __init__(self, action: str) -> None:
        super().__init__(f"({action}) is disallowed by policy")


class NotFound(ApiError):
    status = 404
    type = "NotFound"


def not_found(kind: str, resource_id: str) -> NotFound:
    """``NetworkNotFound`` & co., with Neutron's wording."""
    return NotFound(f"{kind} {resource_id} could not be found.", type=f"{kind}NotFound")


class MethodNotAllowed(ApiError):
    status = 405
    type = "HTTPMethodNotAllowed"


class Conflict(ApiError):
    status = 409
    type = "Conflict"


class InUse(Conflict):
    type = "InUse"


class OverQuota(Conflict):
    type = "OverQuota"

    def __init__(self, resources: list[str]) -> None:
        super().__init__(f"Quota exceeded for resources: {resources}.")


class RequestTooLarge(ApiError):
    status = 413
    type = "HTTPRequestEntityTooLarge"


class PreconditionFailed(ApiError):
    status = 412
    type = "RevisionNumberConstraintFailed"


class ServiceUnavailable(ApiError):
    """Something neutrino depends on (the database, an external Keystone) cannot answer now."""

    status = 503
    type = "ServiceUnavailable"


class ClientError(NeutrinoError):
    """A call from neutrino's own tools to its server failed (one line for the user); ``status`` is the
    HTTP status, None when nothing answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KernelError(NeutrinoError):
    """A kernel or daemon operation failed; carries what it was about."""

    def __init__(self, message: str, *, obj: str = "", namespace: str = "", errno: int | None = None) -> None:
        where = f" [{obj}{' in ' + namespace if namespace else ''}]" if obj or namespace else ""
        super().__init__(f"{message}{where}")
        self.obj = obj
        self.namespace = namespace
        self.errno = errno
