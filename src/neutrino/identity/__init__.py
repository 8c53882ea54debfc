"""Identity: who is calling, in one of three modes chosen by ``identity.mode``.

- ``builtin``: a Keystone v3 subset served at ``/identity/v3`` (password and token auth, a catalog that
  points at this server, users/projects/roles in the database, tokens that survive restarts).
- ``keystone``: tokens are validated against an external Keystone, with a small cache.
- ``noauth``: development only; headers say who you are.

Every mode gives the API the same thing: ``authenticate(headers) -> RequestContext``, raising
``Unauthorized`` for a missing, invalid, expired or revoked token. It is on every request's path, so
validated tokens are cached in memory (keyed by a hash of the token).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from starlette.routing import BaseRoute

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.db.engine import Database
from neutrino.errors import ConfigError


class Identity(Protocol):
    routes: BaseRoute | None  # Mount("/identity", ...) in builtin mode, else None

    def bootstrap(self) -> None:
        """Idempotent: create the initial rows (the tables must exist)."""

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext:
        """The caller's context; raises neutrino.errors.Unauthorized for a bad or missing token."""

    async def aclose(self) -> None: ...


def build_identity(cfg: Config, db: Database) -> Identity:
    mode = cfg.identity.mode
    if mode == "builtin":
        from neutrino.identity.builtin import BuiltinIdentity
        return BuiltinIdentity(cfg, db)
    if mode == "keystone":
        if not cfg.identity.auth_url:
            raise ConfigError("identity.mode keystone needs identity.auth_url (Keystone's URL)")
        from neutrino.identity.keystone import KeystoneIdentity
        return KeystoneIdentity(cfg)
    if mode == "noauth":
        from neutrino.identity.noauth import NoAuth
        return NoAuth()
    raise ConfigError(f"identity.mode must be builtin, keystone or noauth, not {mode!r}")
