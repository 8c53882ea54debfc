"""HTTP plumbing shared by the Neutron API and the identity service: JSON out, capped bodies in, every
failure as a NeutronError body. Imports no other module of neutrino.api."""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from neutrino.errors import (
    ApiError,
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ServiceUnavailable,
)

log = logging.getLogger("neutrino.api")

Handler = Callable[[Request], Awaitable[Response]]


def declared_too_large(request: Request, limit: int) -> bool:
    """The body announces (Content-Length) more than ``limit`` bytes: refuse before reading any of it."""
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes: by its Content-Length before anything is
    read, and by counting while a chunked body streams in, so an oversized body is never held in memory."""
    if declared_too_large(request, limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 before parsing when it is larger than ``limit`` bytes."""
    raw = await read_capped(request, limit)
    if raw is None:
        raise RequestTooLarge(f"Request is too large: the limit is {limit} bytes.")
    return raw


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 when too large, 400 when empty or malformed."""
    raw = await read_body(request, limit)
    if not raw:
        raise BadRequest("Resource body required", type="HTTPBadRequest")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("Malformed request body", type="HTTPBadRequest") from None


JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds") + "Z"
    raise TypeError(type(value))


_libc = ctypes.CDLL(None)
BIG_RESPONSE = 4 << 20


def _give_back_memory() -> None:
    """After a big listing, hand freed heap back to the OS (glibc keeps it otherwise, and RSS stays up)."""
    _libc.malloc_trim(0)


def json_response(body: Any, status: int = 200) -> Response:
    try:
        raw = orjson.dumps(body, option=JSON_OPTIONS)
    except TypeError:  # integers beyond 64 bits (IPv6 address counts): the stdlib handles them
        raw = json.dumps(body, separators=(",", ":"), default=_iso).encode()
    background = BackgroundTask(_give_back_memory) if len(raw) > BIG_RESPONSE else None
    return Response(raw, status_code=status, media_type="application/json", background=background)


def error_response(exc: ApiError) -> Response:
    response = json_response(exc.body(), exc.status)
    if exc.status == 413:  # the rest of the body is never read: close rather than drain it
        response.headers["Connection"] = "close"
    return response


def _failure(request: Request, exc: Exception) -> ApiError:
    """What an exception means to the client; the unexpected ones are logged with a request id."""
    if isinstance(exc, ApiError):
        return exc
    where = f"{request.method} {request.url.path}"
    if isinstance(exc, IntegrityError):
        log.warning("conflict on %s: %s", where, exc.orig)
        return Conflict("The request conflicts with the current state; retry.")
    if isinstance(exc, DataError):  # a value the database cannot hold that validation let through
        log.warning("refused value on %s: %s", where, exc.orig)
        return BadRequest("A value in the request cannot be stored or compared.", type="HTTPBadRequest")
    if isinstance(exc, OperationalError):
        log.error("database unavailable on %s: %s", where, exc.orig)
        return ServiceUnavailable("The database is unavailable; retry later.")
    rid = "req-" + str(uuid.uuid4())
    log.error("unexpected error %s on %s", rid, where, exc_info=exc)
    return ApiError(f"Request Failed: internal server error while processing your request ({rid}).",
                    type="HTTPInternalServerError")


def guarded(handler: Handler) -> Handler:
    """Turn every failure into a NeutronError response; log the unexpected ones with a request id."""
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        if request.method == "HEAD":
            # Starlette routes HEAD wherever GET is allowed; handlers only know GET, so HEAD runs as GET
            # (the server drops the body) and can never fall through to a write.
            request = Request({**request.scope, "method": "GET"}, request.receive)
        try:
            response = await handler(request)
        except Exception as exc:
            response = error_response(_failure(request, exc))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d in %.1f ms", request.method, request.url.path, response.status_code,
                      (time.perf_counter() - started) * 1000)
        return response
    return run


async def not_found_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (no route, wrong method) as NeutronError bodies."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return error_response(MethodNotAllowed("The method is not allowed for this resource."))
    return error_response(NotFound("The resource could not be found.", type="HTTPNotFound"))


def id_in_body(body: Any, key: str) -> str:
    """``{key: "<id>"}``, the body that schedules a resource to an agent; 400 otherwise."""
    if not isinstance(body, dict) or not isinstance(body.get(key), str):
        raise BadRequest(f"Invalid body: expected {{\"{key}\": ...}}", type="HTTPBadRequest")
    return str(body[key])
