"""What every service call needs besides its transaction: the configuration and per-process hints."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.errors import PolicyNotAuthorized
from neutrino.services.standard import check_revision


@dataclass
class Core:
    cfg: Config
    # Per-subnet allocation cursors: where the last allocation ended, so the next one does not rescan
    # taken addresses. Only a hint — correctness comes from the unique key checked in the transaction.
    cursors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def require_writer(ctx: RequestContext, action: str) -> None:
    """Readers may look but not change (Keystone's reader role)."""
    if not ctx.can_write:
        raise PolicyNotAuthorized(f"rule:{action}")


def require_owner(ctx: RequestContext, project_id: str, action: str) -> None:
    """Changing a resource needs admin or its own project (shared resources are visible, not writable)."""
    if not ctx.is_admin and project_id != ctx.project_id:
        raise PolicyNotAuthorized(f"rule:{action}")


def guard_change(ctx: RequestContext, project_id: str, action: str, current_revision: int,
                 if_match: str | None, *, owner_only: bool = True) -> None:
    """Everything an update or delete checks first: write role, ownership, ``If-Match`` revision."""
    require_writer(ctx, action)
    if owner_only:
        require_owner(ctx, project_id, action)
    check_revision(current_revision, if_match)
