"""What the handlers share: config, database, identity, the service core, the collections, the agent
channel — one ``Api`` per application, found from any request with ``api_of``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from neutrino.api.attributes import ResourceSpec
from neutrino.api.http import read_json
from neutrino.api.resources import (
    AGENT,
    FLOATINGIP,
    NETWORK,
    PORT,
    ROUTER,
    SECURITY_GROUP,
    SECURITY_GROUP_RULE,
    SUBNET,
)
from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.db.engine import Database
from neutrino.errors import NotFound, PolicyNotAuthorized, Unauthorized
from neutrino.services import agents, floatingips, networks, ports, routers, secgroups, sgrules, subnets
from neutrino.services.core import Core
from neutrino.sync.channel import Channel
from neutrino.sync.feed import Feed

if TYPE_CHECKING:
    from neutrino.identity import Identity


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
    # Work a list needs written first, when ``list_needs`` says so (security groups: the caller's
    # project's default group, made on its first need).
    list_needs: Callable[[Connection, RequestContext], bool] | None = None
    before_list: Callable[[Core, Connection, RequestContext], None] | None = None


def bindings(cfg: Config) -> dict[str, Binding]:
    return {b.spec.collection: b for b in (
        Binding(NETWORK, networks.create, networks.update, networks.delete_, networks.fetch, networks.scope,
                networks.view),
        Binding(SUBNET, subnets.create, subnets.update, subnets.delete_, subnets.fetch, subnets.scope,
                subnets.view),
        Binding(PORT, ports.create, ports.update, ports.delete_, ports.fetch, ports.scope, ports.view),
        Binding(ROUTER, routers.create, routers.update, routers.delete_, routers.fetch, routers.scope,
                routers.view),
        Binding(FLOATINGIP, floatingips.create, floatingips.update, floatingips.delete_, floatingips.fetch,
                floatingips.scope, floatingips.view),
        Binding(SECURITY_GROUP, secgroups.create, secgroups.update, secgroups.delete_, secgroups.fetch,
                secgroups.scope, secgroups.view, secgroups.needs_default, secgroups.make_default),
        Binding(SECURITY_GROUP_RULE, sgrules.create, sgrules.update, sgrules.delete_, sgrules.fetch, sgrules.scope,
                sgrules.view, secgroups.needs_default, secgroups.make_default),
        Binding(AGENT, agents.create, agents.update, agents.delete_, agents.fetch, agents.scope,
                agents.make_view(cfg.agent.agent_down_seconds)),
    )}


class Api:
    def __init__(self, cfg: Config, db: Database, identity: Identity) -> None:
        self.cfg = cfg
        self.db = db
        self.identity = identity
        self.core = Core(cfg)
        self.base_url = cfg.public_url
        self.bindings = bindings(cfg)
        self.feed = Feed(self.read, None if db.is_sqlite else db.url)
        self.channel = Channel(self.core, self.read, self.write, self.feed)

    async def context(self, request: Request) -> RequestContext:
        ctx = await self.identity.authenticate(request.headers)
        if not ctx.project_id:  # an unscoped (or domain-scoped) token owns nothing here
            raise Unauthorized("This API needs a project-scoped token.", type="HTTPUnauthorized")
        return ctx

    async def admin_context(self, request: Request, action: str) -> RequestContext:
        ctx = await self.context(request)
        if not ctx.is_admin:
            raise PolicyNotAuthorized(f"rule:{action}")
        return ctx

    async def body(self, request: Request) -> Any:
        return await read_json(request, self.cfg.api.max_body_bytes)

    def binding(self, collection: str) -> Binding:
        b = self.bindings.get(collection.removesuffix(".json"))
        if b is None:
            raise NotFound("The resource could not be found.", type="HTTPNotFound")
        return b

    def read(self, fn: Callable[[Connection], Any]) -> Awaitable[Any]:
        """Run ``fn`` in one read transaction, off the event loop."""
        def run() -> Any:
            with self.db.read() as conn:
                return fn(conn)
        return run_in_threadpool(run)

    async def write(self, fn: Callable[[Connection], Any]) -> Any:
        """Run ``fn`` in one write transaction, off the event loop; then wake the feed."""
        result = await run_in_threadpool(self.db.write, fn)
        self.feed.notify()
        return result


def api_of(request: Request) -> Api:
    api: Api = request.app.state.api
    return api
