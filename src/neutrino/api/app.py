"""The ASGI application: Neutron v2.0 wire conventions over the services.

Each request: authenticate (identity layer) -> parse and validate (attributes/listing) -> one service
call inside one DB transaction (in a worker thread) -> JSON out. Every error leaves as a NeutronError body
with the right status; nothing unexpected leaks as an HTML 500.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from neutrino.api import discovery, listing
from neutrino.api.agents import AGENT
from neutrino.api.attributes import ResourceSpec, parse_bodies, parse_update
from neutrino.api.http import read_capped
from neutrino.api.resources import NETWORK, PORT, SUBNET
from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.db.engine import Database
from neutrino.errors import (
    ApiError,
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ServiceUnavailable,
    Unauthorized,
)

if TYPE_CHECKING:
    from neutrino.identity import Identity
from neutrino.services import agents, networks, ports, subnets
from neutrino.services.core import Core
from neutrino.sync import snapshot
from neutrino.sync.channel import Channel
from neutrino.sync.feed import Feed

log = logging.getLogger("neutrino.api")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Binding:
    """A collection: its wire spec and the service functions behind it."""
    spec: ResourceSpec
    create: Callable[[Core, Connection, RequestContext, dict[str, Any]], str]
    update: Callable[[Core, Connection, RequestContext, str, dict[str, Any], str | None], None]
    delete: Callable[[Core, Connection, RequestContext, str, str | None], None]
    fetch: Callable[[Connection, RequestContext, str], Any]
    scope: Callable[[RequestContext], Any]
    view: Callable[[Connection, Sequence[Any], RequestContext], list[dict[str, Any]]]


def bindings(cfg: Config) -> dict[str, Binding]:
    return {b.spec.collection: b for b in (
        Binding(NETWORK, networks.create, networks.update, networks.delete_, networks.fetch, networks.scope,
                networks.view),
        Binding(SUBNET, subnets.create, subnets.update, subnets.delete_, subnets.fetch, subnets.scope,
                subnets.view),
        Binding(PORT, ports.create, ports.update, ports.delete_, ports.fetch, ports.scope, ports.view),
        Binding(AGENT, agents.create, agents.update, agents.delete_, agents.fetch, agents.scope,
                agents.make_view(cfg.agent.agent_down_seconds)),
    )}


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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 before parsing when it is larger than ``limit`` bytes."""
    raw = await read_capped(request, limit)
    if raw is None:
        raise RequestTooLarge(f"Request is too large: the limit is {limit} bytes.")
    return raw


def error_response(exc: ApiError) -> Response:
    response = json_response(exc.body(), exc.status)
    if exc.status == 413:  # the rest of the body is never read: close rather than drain it
        response.headers["Connection"] = "close"
    return response


class Api:
    """Holds what handlers share: config, database, identity, the service core."""

    def __init__(self, cfg: Config, db: Database, identity: Identity) -> None:
        self.cfg = cfg
        self.db = db
        self.identity = identity
        self.core = Core(cfg)
        self.base_url = cfg.public_url
        self.bindings = bindings(cfg)
        self.feed = Feed(lambda: self.read(snapshot.current_revision))
        self.channel = Channel(self.core, self.read, self.write, self.feed)

    # -- plumbing -------------------------------------------------------------------------------------
    async def context(self, request: Request) -> RequestContext:
        ctx = await self.identity.authenticate(request.headers)
        if not ctx.project_id:  # an unscoped (or domain-scoped) token owns nothing here
            raise Unauthorized("This API needs a project-scoped token.", type="HTTPUnauthorized")
        return ctx

    async def body(self, request: Request) -> Any:
        raw = await read_body(request, self.cfg.api.max_body_bytes)
        if not raw:
            raise BadRequest("Resource body required", type="HTTPBadRequest")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("Malformed request body", type="HTTPBadRequest") from None

    def read(self, fn: Callable[[Connection], Any]) -> Awaitable[Any]:
        def run() -> Any:
            with self.db.read() as conn:
                return fn(conn)
        return run_in_threadpool(run)

    async def write(self, fn: Callable[[Connection], Any]) -> Any:
        result = await run_in_threadpool(self.db.write, fn)
        self.feed.notify()
        return result

    # -- collections ----------------------------------------------------------------------------------
    async def list(self, request: Request, b: Binding) -> Response:
        ctx = await self.context(request)
        params = list(request.query_params.multi_items())
        q = listing.parse_list_query(b.spec, params, is_admin=ctx.is_admin,
                                     default_limit=self.cfg.api.default_page_limit)

        def run(conn: Connection) -> list[dict[str, Any]]:
            stmt, reverse = listing.select_page(conn, b.spec, q, b.scope(ctx))
            rows = list(conn.execute(stmt).all())
            if reverse:
                rows.reverse()
            return b.view(conn, rows, ctx)

        items = await self.read(run)
        body: dict[str, Any] = {b.spec.collection: [listing.select_fields(i, q.fields) for i in items]}
        links = listing.page_links(self.base_url, b.spec.collection, params, q, items)
        if links:
            body[f"{b.spec.collection}_links"] = links
        return json_response(body)

    async def show(self, request: Request, b: Binding, rid: str) -> Response:
        ctx = await self.context(request)
        fields = tuple(f for value in request.query_params.getlist("fields") for f in value.split(",") if f)
        item = await self.read(lambda conn: b.view(conn, [b.fetch(conn, ctx, rid)], ctx)[0])
        return json_response({b.spec.name: listing.select_fields(item, fields)})

    async def create(self, request: Request, b: Binding) -> Response:
        ctx = await self.context(request)
        items, bulk = parse_bodies(b.spec, await self.body(request), ctx)

        def run(conn: Connection) -> list[dict[str, Any]]:
            ids = [b.create(self.core, conn, ctx, dict(item)) for item in items]
            rows = [b.fetch(conn, ctx, rid) for rid in ids]
            return b.view(conn, rows, ctx)

        created = await self.write(run)
        if bulk:
            return json_response({b.spec.collection: created}, 201)
        return json_response({b.spec.name: created[0]}, 201)

    async def update(self, request: Request, b: Binding, rid: str) -> Response:
        ctx = await self.context(request)
        data = parse_update(b.spec, await self.body(request), ctx)
        if_match = request.headers.get("if-match")

        def run(conn: Connection) -> dict[str, Any]:
            b.update(self.core, conn, ctx, rid, data, if_match)
            return b.view(conn, [b.fetch(conn, ctx, rid)], ctx)[0]

        return json_response({b.spec.name: await self.write(run)})

    async def delete(self, request: Request, b: Binding, rid: str) -> Response:
        ctx = await self.context(request)
        if_match = request.headers.get("if-match")
        await self.write(lambda conn: b.delete(self.core, conn, ctx, rid, if_match))
        return Response(status_code=204)


def _binding(api: Api, collection: str) -> Binding:
    b = api.bindings.get(collection.removesuffix(".json"))
    if b is None:
        raise NotFound("The resource could not be found.", type="HTTPNotFound")
    return b


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
        except ApiError as exc:
            response = error_response(exc)
        except IntegrityError as exc:
            log.warning("conflict on %s %s: %s", request.method, request.url.path, exc.orig)
            response = error_response(Conflict("The request conflicts with the current state; retry."))
        except DataError as exc:  # a value the database cannot hold that validation let through
            log.warning("refused value on %s %s: %s", request.method, request.url.path, exc.orig)
            response = error_response(BadRequest("A value in the request cannot be stored or compared.",
                                                 type="HTTPBadRequest"))
        except OperationalError as exc:
            log.error("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
            response = error_response(ServiceUnavailable("The database is unavailable; retry later."))
        except Exception:
            rid = "req-" + str(uuid.uuid4())
            log.exception("unexpected error %s on %s %s", rid, request.method, request.url.path)
            response = error_response(ApiError(f"Request Failed: internal server error while processing your "
                                               f"request ({rid}).", type="HTTPInternalServerError"))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d in %.1f ms", request.method, request.url.path, response.status_code,
                      (time.perf_counter() - started) * 1000)
        return response
    return run


def routes(api: Api) -> list[BaseRoute]:
    async def root(request: Request) -> Response:
        return json_response(discovery.versions(api.base_url))

    async def v2(request: Request) -> Response:
        await api.context(request)
        return json_response(discovery.resources(api.base_url))

    async def extensions(request: Request) -> Response:
        await api.context(request)
        return json_response({"extensions": [e.as_dict() for e in discovery.EXTENSIONS]})

    async def extension(request: Request) -> Response:
        await api.context(request)
        ext = discovery.BY_ALIAS.get(request.path_params["alias"])
        if ext is None:
            raise NotFound(f"Extension with alias {request.path_params['alias']} does not exist",
                           type="HTTPNotFound")
        return json_response({"extension": ext.as_dict()})

    async def collection(request: Request) -> Response:
        b = _binding(api, request.path_params["collection"])
        if request.method == "GET":
            return await api.list(request, b)
        return await api.create(request, b)

    async def member(request: Request) -> Response:
        b = _binding(api, request.path_params["collection"])
        rid = request.path_params["id"].removesuffix(".json")
        if request.method == "GET":
            return await api.show(request, b, rid)
        if request.method == "PUT":
            return await api.update(request, b, rid)
        return await api.delete(request, b, rid)

    from neutrino.api import agents as agent_api
    from neutrino.api import extras  # the smaller sub-resources: tags, quotas, ip availability

    table: list[BaseRoute] = [
        Route("/", guarded(root), methods=["GET"]),
        Route("/v2.0", guarded(v2), methods=["GET"]),
        Route("/v2.0/", guarded(v2), methods=["GET"]),
        Route("/v2.0/extensions", guarded(extensions), methods=["GET"]),
        Route("/v2.0/extensions.json", guarded(extensions), methods=["GET"]),
        Route("/v2.0/extensions/{alias}", guarded(extension), methods=["GET"]),
        *extras.routes(api, guarded),
        *agent_api.routes(api, guarded),
        Route("/v2.0/{collection}", guarded(collection), methods=["GET", "POST"]),
        Route("/v2.0/{collection}/{id}", guarded(member), methods=["GET", "PUT", "DELETE"]),
    ]
    return table


async def not_found_handler(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return error_response(MethodNotAllowed("The method is not allowed for this resource."))
    return error_response(NotFound("The resource could not be found.", type="HTTPNotFound"))


def create_app(cfg: Config, db: Database, identity: Identity) -> Starlette:
    api = Api(cfg, db, identity)
    table = routes(api)
    if identity.routes is not None:
        table.insert(0, identity.routes)
    app = Starlette(routes=table, exception_handlers={404: not_found_handler, 405: not_found_handler})
    app.state.api = api
    return app

