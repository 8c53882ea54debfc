"""Keystone's wire conventions: error bodies, timestamps, JSON bodies, per-method dispatch.

Identity routes answer in Keystone's shape (``{"error": {"code", "title", "message"}}``), not Neutron's,
because keystoneauth and the CLI read that shape for identity calls.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from neutrino.api.http import declared_too_large, read_capped

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 409: "Conflict", 413: "Request Entity Too Large",
          500: "Internal Server Error"}
# Keystone's default max_request_body_size: bodies are refused beyond this before they are parsed.
MAX_BODY_BYTES = 114_688
AUTH_REQUIRED = "The request you have made requires authentication."
NOT_ALLOWED = "You are not authorized to perform the requested action."


class KeystoneError(Exception):
    """An identity request failed; rendered in Keystone's error shape."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.title = TITLES.get(code, "Error")
        self.message = message


def unauthorized(message: str = AUTH_REQUIRED) -> KeystoneError:
    return KeystoneError(401, message)


def forbidden() -> KeystoneError:
    return KeystoneError(403, NOT_ALLOWED)


def not_found(kind: str, ref: str) -> KeystoneError:
    return KeystoneError(404, f"Could not find {kind}: {ref}.")


def bad_request(message: str) -> KeystoneError:
    return KeystoneError(400, message)


def header(headers: Mapping[str, str], name: str) -> str:
    """A header from Starlette's case-insensitive headers, or from a plain dict in either spelling."""
    return headers.get(name.lower()) or headers.get(name) or ""


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def too_large() -> KeystoneError:
    return KeystoneError(413, f"Request is too large: the identity service accepts bodies of at most "
                              f"{MAX_BODY_BYTES} bytes.")


def error_response(exc: KeystoneError) -> Response:
    # A refused oversized body is not read: close the connection rather than drain it.
    headers = {"Connection": "close"} if exc.code == 413 else None
    return json_response({"error": {"code": exc.code, "title": exc.title, "message": exc.message}}, exc.code,
                         headers)


def timestamp(value: dt.datetime) -> str:
    """Keystone's timestamp format (naive UTC in, ``...Z`` out)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 once it passes MAX_BODY_BYTES (never held in memory whole)."""
    raw = await read_capped(request, MAX_BODY_BYTES)
    if raw is None:
        raise too_large()
    return raw


def _has_nul(value: Any) -> bool:
    """Any string (key or value) holding NUL, which PostgreSQL cannot store or even compare. Iterative: JSON
    nesting may go deeper than Python's recursion limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def json_body(request: Request, key: str) -> dict[str, Any]:
    """``{key: {...}}`` from the request body, or a 400 (413 when too large) in Keystone's words."""
    try:
        body = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError:
        raise bad_request("Malformed request body.") from None
    inner = body.get(key) if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        raise bad_request(f"Expecting to find {key} in request body.")
    if _has_nul(inner):
        raise bad_request("Invalid input: strings may not contain NUL characters.")
    return inner


def _check_url(request: Request) -> None:
    """No id or name holds NUL, and PostgreSQL could not even look one up: 404 in a path, 400 in a query."""
    if "\x00" in request.url.path:
        raise KeystoneError(404, "The resource could not be found.")
    if any("\x00" in k or "\x00" in v for k, v in request.query_params.multi_items()):
        raise bad_request("Invalid input: query parameters may not contain NUL characters.")


def dispatch(handlers: Mapping[str, Handler]) -> Handler:
    """One endpoint for several methods: KeystoneError becomes Keystone's error body, an unknown method 405."""
    allowed = {m.upper(): h for m, h in handlers.items()}
    if "GET" in allowed and "HEAD" not in allowed:
        allowed["HEAD"] = allowed["GET"]

    async def endpoint(request: Request) -> Response:
        handler = allowed.get(request.method)
        try:
            if handler is None:
                raise KeystoneError(405, f"The method {request.method} is not allowed for this resource.")
            if declared_too_large(request, MAX_BODY_BYTES):
                raise too_large()
            _check_url(request)
            return await handler(request)
        except KeystoneError as exc:
            return error_response(exc)
        except Exception:
            log.exception("identity request %s %s failed", request.method, request.url.path)
            return error_response(KeystoneError(500, "An unexpected error prevented the server from "
                                                     "fulfilling your request."))

    return endpoint


def route(path: str, handlers: Mapping[str, Handler] | None = None, *, fallback: Handler | None = None) -> Route:
    """A route matched for every method (OPTIONS, TRACE and made-up ones too): ``dispatch`` answers those it
    does not serve with Keystone's 405, where Starlette would answer in the API's shape. ``fallback``
    serves every method itself."""
    made = Route(path, fallback or dispatch(handlers or {}))
    made.methods = None  # Starlette then matches any method and leaves the answer to the endpoint
    made.path_regex = any_char(made.path_regex)
    return made


def any_char(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """Starlette's path patterns, newline-proof: ``{path:path}`` is ``.*``, which stops at a newline (a path
    holding ``%0a`` fell out of /identity into the API's 404), and a final ``$`` also matches before a
    trailing newline (``/v3/users%0a`` was ``/v3/users``)."""
    text = pattern.pattern
    if text.endswith("$"):
        text = text[:-1] + r"\Z"
    return re.compile(text, pattern.flags | re.DOTALL)
