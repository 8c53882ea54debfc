"""Build and run the API server: database (migrated), identity (bootstrapped), ASGI app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
import yaml
from sqlalchemy import Connection
from starlette.applications import Starlette

from neutrino.api.app import create_app
from neutrino.config import Config
from neutrino.db.engine import Database
from neutrino.db.migrate import upgrade
from neutrino.errors import ConfigError
from neutrino.services.standard import now
from neutrino.sync import cluster, retention

if TYPE_CHECKING:
    from neutrino.identity import Identity

log = logging.getLogger("neutrino.server")


def build(cfg: Config) -> tuple[Starlette, Database, Identity]:
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    db = Database(cfg.database_url)
    upgrade(db)
    from neutrino.identity import build_identity

    identity = build_identity(cfg, db)
    identity.bootstrap()
    app = create_app(cfg, db, identity)
    # Long-lived objects (modules, app, pools) leave the collector's view; young-generation collections
    # become rarer, which keeps big list responses from paying for repeated full scans.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return app, db, identity


def clouds_entry(cfg: Config) -> dict[str, Any]:
    """The clouds.yaml entry that points the openstack CLI and SDK at this server."""
    if cfg.identity.mode == "noauth":
        return {"auth_type": "none", "auth": {"endpoint": cfg.public_url},
                "network_endpoint_override": cfg.public_url}
    if cfg.identity.mode == "keystone":
        return {"auth": {"auth_url": cfg.identity.auth_url}, "region_name": cfg.identity.region,
                "identity_api_version": 3}
    from neutrino.identity.credentials import admin_password

    return {
        "auth": {"auth_url": f"{cfg.public_url}/identity/v3", "username": cfg.identity.admin_user,
                 "password": admin_password(cfg), "project_name": cfg.identity.admin_project,
                 "user_domain_name": "Default", "project_domain_name": "Default"},
        "region_name": cfg.identity.region, "identity_api_version": 3, "interface": "public",
    }


def write_clouds_yaml(cfg: Config, path: Path, name: str = "neutrino") -> Path:
    """Add or replace the ``name`` cloud in ``path``, keeping every other cloud the file has.

    The file holds passwords: it is written mode 0600 from its first byte (temp file + rename), and a
    symlinked clouds.yaml stays a symlink (its target is rewritten).
    """
    path = path.expanduser().resolve()
    data: dict[str, Any] = {}
    try:
        if path.exists():
            data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    clouds = data.get("clouds") or {} if isinstance(data, dict) else None
    if not isinstance(clouds, dict):
        raise ConfigError(f"{path} is not a clouds.yaml (its top is not a mapping with 'clouds'); left untouched")
    clouds[name] = clouds_entry(cfg)
    data["clouds"] = clouds
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


async def serve(cfg: Config, app: Starlette, stop: asyncio.Event) -> None:
    """Serve on TCP (and the unix socket) until ``stop`` is set; the caller owns signal handling."""
    common: dict[str, Any] = {"log_config": None, "access_log": False, "loop": "none", "http": "httptools",
                              "lifespan": "off", "timeout_keep_alive": 30, "timeout_graceful_shutdown": 10}
    configs = [uvicorn.Config(app, host=cfg.api.host, port=cfg.api.port, **common)]
    if cfg.api.socket:
        path = Path(cfg.state_dir) / cfg.api.socket
        path.unlink(missing_ok=True)
        configs.append(uvicorn.Config(app, uds=str(path), **common))
    servers = [uvicorn.Server(c) for c in configs]
    for server in servers:
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    api = app.state.api
    api.feed.start()
    server_id = str(uuid.uuid4())
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    watcher = asyncio.create_task(watch_liveness(cfg, app, stop, server_id))
    log.info("API listening on %s%s", cfg.public_url,
             f" and {Path(cfg.state_dir) / cfg.api.socket}" if cfg.api.socket else "")
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    app.state.api.feed.close()  # agents' long polls answer now instead of holding the shutdown up to 55 s
    for server in servers:
        server.should_exit = True
    stopper.cancel()
    watcher.cancel()
    await asyncio.gather(*tasks)
    if cfg.api.socket:
        (Path(cfg.state_dir) / cfg.api.socket).unlink(missing_ok=True)
    with contextlib.suppress(Exception):  # the database may be what is going away
        await asyncio.wait_for(api.write(lambda conn: cluster.leave(conn, server_id)), 2)


async def watch_liveness(cfg: Config, app: Starlette, stop: asyncio.Event, server_id: str) -> None:
    """Every few seconds: this server's row in ``servers`` (sync/cluster), routers and DHCP moved off agents
    that stopped reporting (services/liveness), the change feed pruned below what live agents need
    (sync/retention)."""
    from neutrino.services import liveness

    api = app.state.api
    every = max(1.0, min(10.0, cfg.agent.agent_down_seconds / 3))

    async def housekeeping(what: str, fn: Callable[[Connection], object]) -> None:
        try:
            await api.write(fn)
        except Exception as exc:  # a database hiccup must not end the watch
            log.warning("%s failed: %s", what, exc)

    await housekeeping("registering this server", lambda conn: cluster.beat(conn, server_id, cfg.public_url, now()))
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        await housekeeping("the server heartbeat", lambda conn: cluster.beat(conn, server_id, cfg.public_url, now()))
        await housekeeping("rescheduling from dead agents", lambda conn: liveness.reschedule_from_dead(conn, api.core))
        await housekeeping("pruning the change feed",
                           lambda conn: retention.prune(conn, cfg.agent.agent_down_seconds, now()))
