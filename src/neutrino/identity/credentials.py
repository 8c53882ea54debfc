"""The builtin admin's password: from the config, else generated on the first start and kept in the state dir.

``identity.admin_password`` wins when it is set. When it is empty, the first ``neutrino up``/``server``
generates a random password and keeps it in ``<state_dir>/admin-password`` (mode 0600, created
atomically, never rewritten); later starts and the local tools (``status``, ``instance``,
``clouds-yaml``) read it from there. There is no well-known default.

A weak password (well-known, short, or the user's own name) is accepted on a loopback address only:
``refuse_weak_beyond_loopback`` turns it into a ConfigError when the API would listen further out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

from neutrino.config import Config
from neutrino.errors import ConfigError

log = logging.getLogger("neutrino.identity")

PASSWORD_FILE = "admin-password"
GENERATED_LENGTH = 24  # from 62 symbols: ~143 bits
ALPHABET = string.ascii_letters + string.digits  # nothing a shell or a YAML file would trip over
MIN_LENGTH = 12
# Passwords seen in defaults, docs and tutorials (compared case-insensitively). Anything shorter than
# MIN_LENGTH is refused anyway, so only longer ones need listing.
WELL_KNOWN = frozenset({
    "admin", "password", "secret", "change-me", "changeme", "openstack", "neutrino", "keystone", "stack",
    "nomoresecret", "password123", "password1234", "administrator", "secretsecret", "adminadmin",
    "adminpassword", "admin-password", "admin_password", "changemenow", "change-me-now", "please-change-me",
    "123456789012", "1234567890123", "qwertyuiopas", "letmeinplease", "supersecret", "supersecretpassword",
})


@dataclass(frozen=True, slots=True)
class AdminPassword:
    value: str
    source: str  # "config" or the path of the password file
    generated: bool  # made by this call: the caller tells the operator once


def password_file(cfg: Config) -> Path:
    return Path(cfg.state_dir).resolve() / PASSWORD_FILE


def generate() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(GENERATED_LENGTH))


def _read(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the admin password from {path}: {exc}") from exc
    if not value:
        raise ConfigError(f"{path} is empty: delete it to have a new admin password generated on the next start")
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return value


def _create(path: Path, value: str) -> bool:
    """Write ``value`` to ``path`` unless it exists: a complete 0600 file appears at once, or nothing does.

    False when another process created the file first (its password is the one to use).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{PASSWORD_FILE}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike rename, never replaces a file someone else made meanwhile
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def admin_password(cfg: Config) -> str:
    """The admin password in effect, for tools talking to a server on this state dir; never generates one."""
    if cfg.identity.admin_password:
        return cfg.identity.admin_password
    path = password_file(cfg)
    found = _read(path)
    if found is None:
        raise ConfigError(f"identity.admin_password is not set and {path} does not exist yet: start "
                          "`neutrino up` (or `neutrino server`) once with this state directory to have one "
                          "generated, or set identity.admin_password")
    return found


def ensure(cfg: Config) -> AdminPassword:
    """The admin password in effect; generated and stored on the first start when the config sets none."""
    if cfg.identity.admin_password:
        return AdminPassword(cfg.identity.admin_password, "config", generated=False)
    path = password_file(cfg)
    found = _read(path)
    if found is not None:
        return AdminPassword(found, str(path), generated=False)
    value = generate()
    try:
        created = _create(path, value)
    except OSError as exc:
        raise ConfigError(f"cannot keep a generated admin password in {path}: {exc}") from exc
    if created:
        return AdminPassword(value, str(path), generated=True)
    raced = _read(path)
    if raced is None:  # created and removed again under our feet
        raise ConfigError(f"{path} vanished while it was being created")
    return AdminPassword(raced, str(path), generated=False)


def weakness(password: str, user: str) -> str | None:
    """Why ``password`` is too weak to face a network, or None."""
    folded = password.strip().casefold()
    if folded in WELL_KNOWN:
        return "it is a well-known password"
    if folded == user.strip().casefold():
        return "it is the user name"
    if len(password) < MIN_LENGTH:
        return f"it is shorter than {MIN_LENGTH} characters"
    if len(set(folded)) < 4:
        return "it repeats too few characters"
    return None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and localhost; every other address or name is not."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def refuse_weak_beyond_loopback(cfg: Config, password: AdminPassword) -> None:
    """ConfigError when the builtin identity would face a network with a weak admin password."""
    if cfg.identity.mode != "builtin":
        return
    reason = weakness(password.value, cfg.identity.admin_user)
    if reason is None:
        return
    where = "identity.admin_password" if password.source == "config" else password.source
    if not is_loopback(cfg.api.host):
        raise ConfigError(
            f"refusing to listen on {cfg.api.host or 'all addresses'} with the built-in identity and a weak admin "
            f"password from {where} ({reason}): set identity.admin_password (NEUTRINO_IDENTITY__ADMIN_PASSWORD) "
            f"to at least {MIN_LENGTH} characters that are not a well-known password, or unset it to have one "
            "generated, or listen on 127.0.0.1")
    log.warning("the admin password from %s is weak (%s): fine on %s, refused on any other address",
                where, reason, cfg.api.host)
