"""The ASGI application: the route table of the Neutron v2.0 API over the services.

Each request: authenticate (identity layer) -> parse and validate (attributes/listing) -> one service
call inside one DB transaction (in a worker thread) -> JSON out. Every error leaves as a NeutronError body
with the right status (``http.guarded``); nothing unexpected leaks as an HTML 500.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from neutrino.api import agents, collections, extras, routers
from neutrino.api.http import guarded, not_found_handler
from neutrino.api.state import Api
from neutrino.config import Config
from neutrino.db.engine import Database

if TYPE_CHECKING:
    from neutrino.identity import Identity

GET, POST, PUT, DELETE = "GET", "POST", "PUT", "DELETE"

# (path, handler, methods); the generic collection routes come last, after every more specific path.
ROUTES = [
    ("/", collections.root, [GET]),
    ("/v2.0", collections.v2, [GET]),
    ("/v2.0/", collections.v2, [GET]),
    ("/v2.0/extensions", collections.extensions, [GET]),
    ("/v2.0/extensions.json", collections.extensions, [GET]),
    ("/v2.0/extensions/{alias}", collections.extension, [GET]),
    ("/v2.0/quotas", extras.quota_list, [GET]),
    ("/v2.0/quotas/tenant", extras.quota_tenant, [GET]),
    ("/v2.0/quotas/{project_id}/default", extras.quota_default, [GET]),
    ("/v2.0/quotas/{project_id}/details", extras.quota_details, [GET]),
    ("/v2.0/quotas/{project_id}/details.json", extras.quota_details, [GET]),
    ("/v2.0/quotas/{project_id}", extras.quota_one, [GET, PUT, DELETE]),
    ("/v2.0/network-ip-availabilities", extras.ip_availabilities, [GET]),
    ("/v2.0/network-ip-availabilities/{id}", extras.ip_availability, [GET]),
    ("/v2.0/{collection}/{id}/tags", extras.tags_all, [GET, PUT, DELETE]),
    ("/v2.0/{collection}/{id}/tags/{tag}", extras.tag_one, [GET, PUT, DELETE]),
    ("/v2.0/agents/{id}/dhcp-networks", agents.agent_networks, [GET, POST]),
    ("/v2.0/agents/{id}/dhcp-networks/{network_id}", agents.agent_network, [DELETE]),
    ("/v2.0/networks/{id}/dhcp-agents", agents.network_agents, [GET]),
    ("/v2.0/agents/{id}/l3-routers", routers.agent_routers, [GET, POST]),
    ("/v2.0/agents/{id}/l3-routers/{router_id}", routers.agent_router, [DELETE]),
    ("/v2.0/routers/{id}/l3-agents", routers.router_agents, [GET]),
    ("/v2.0/routers/{id}/{action}", routers.router_action, [PUT]),
    ("/agent-api/v1/report", agents.report, [POST]),
    ("/agent-api/v1/snapshot", agents.snapshot, [GET]),
    ("/agent-api/v1/wait", agents.wait, [GET]),
    ("/agent-api/v1/port-status", agents.port_status, [POST]),
    ("/agent-api/v1/status", agents.cluster_status, [GET]),
    ("/v2.0/{collection}", collections.collection, [GET, POST]),
    ("/v2.0/{collection}/{id}", collections.member, [GET, PUT, DELETE]),
]


def routes() -> list[BaseRoute]:
    return [Route(path, guarded(handler), methods=methods) for path, handler, methods in ROUTES]


def create_app(cfg: Config, db: Database, identity: Identity) -> Starlette:
    table = routes()
    if identity.routes is not None:
        table.insert(0, identity.routes)
    app = Starlette(routes=table, exception_handlers={404: not_found_handler, 405: not_found_handler})
    app.state.api = Api(cfg, db, identity)
    return app
