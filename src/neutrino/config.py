"""Configuration: one YAML file, every key overridable from the environment.

``NEUTRINO_<SECTION>__<KEY>=value`` overrides ``section.key`` (e.g. ``NEUTRINO_API__PORT=9797``);
values are parsed as YAML scalars so numbers and booleans keep their types. The file is found from
``--config``, else ``$NEUTRINO_CONFIG``, else ``<state_dir>/neutrino.yaml`` when it exists.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neutrino.errors import ConfigError


@dataclass(slots=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 9696
    # Public URL put in the identity catalog and in links; empty means http://host:port.
    public_url: str = ""
    # Also serve on this unix socket (local agents and tools; "" to disable). Relative to state_dir.
    socket: str = "neutrino.sock"
    workers_threads: int = 32
    default_page_limit: int = 0  # 0: no implicit pagination
    max_body_bytes: int = 114688  # larger request bodies get 413 before parsing (Neutron's default)


@dataclass(slots=True)
class DatabaseConfig:
    # Empty: SQLite file under the state directory.
    url: str = ""


@dataclass(slots=True)
class IdentityConfig:
    # builtin: the Keystone v3 subset served at /identity/v3; keystone: validate tokens against an
    # external Keystone; noauth: every request is admin of project "admin" unless X-Project-Id says otherwise.
    mode: str = "builtin"
    token_ttl_seconds: int = 3600 * 12
    region: str = "RegionOne"
    # builtin mode: the admin made on first start. An empty password: generated on first start and kept in
    # <state_dir>/admin-password (neutrino.identity.credentials); a set one replaces it on every start.
    admin_user: str = "admin"
    admin_password: str = ""
    admin_project: str = "admin"
    # keystone mode: where Keystone is and the service credentials used to validate tokens.
    auth_url: str = ""
    service_user: str = ""
    service_password: str = ""
    service_project: str = "service"
    service_user_domain: str = "Default"
    service_project_domain: str = "Default"
    cache_seconds: int = 60


@dataclass(slots=True)
class NetworkConfig:
    base_mac: str = "fa:16:3e:00:00:00"
    default_mtu: int = 1500
    vxlan_overhead: int = 50
    tenant_network_type: str = "vxlan"
    vni_ranges: list[str] = field(default_factory=lambda: ["1:16777215"])
    vlan_ranges: list[str] = field(default_factory=list)  # "physnet:min:max"
    flat_networks: list[str] = field(default_factory=lambda: ["*"])
    dhcp_agents_per_network: int = 1
    dns_domain: str = "openstacklocal."


@dataclass(slots=True)
class QuotaConfig:
    network: int = 100
    subnet: int = 100
    port: int = 500
    router: int = 10
    floatingip: int = 50
    security_group: int = 10
    security_group_rule: int = 100
    rbac_policy: int = 10
    subnetpool: int = -1


@dataclass(slots=True)
class AgentConfig:
    host: str = ""  # empty: the machine's hostname
    # physnet -> host interface, for flat (and VLAN) provider networks.
    physical_interface_mappings: dict[str, str] = field(default_factory=dict)
    # address used as the VXLAN tunnel endpoint; empty: the address of the default route's device.
    local_ip: str = ""
    heartbeat_seconds: float = 10.0
    # A full pass at least this often, even when nothing woke the agent: repairs what no event reported.
    resync_seconds: float = 2.0
    agent_down_seconds: float = 75.0
    # The API server(s) a stand-alone agent (and the CLI) talks to: one URL, or several separated by commas;
    # the agent fails over to the next when one does not answer. Empty in `neutrino up`: the in-process one.
    server_url: str = ""
    # A remote agent authenticates with these (an admin of the server's identity service).
    auth_url: str = ""  # empty: <server_url>/identity/v3
    username: str = "admin"
    password: str = ""
    project: str = "admin"

    def server_urls(self) -> list[str]:
        """``server_url`` as a list (comma- or space-separated)."""
        urls = [u for u in self.server_url.replace(",", " ").split() if u]
        bad = [u for u in urls if not u.startswith(("http://", "https://", "unix:"))]
        if bad:
            raise ConfigError(f"agent.server_url: {bad[0]!r} is not an http(s):// or unix: URL")
        return urls


@dataclass(slots=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"  # text | json


@dataclass(slots=True)
class Config:
    state_dir: str = "./state"
    api: ApiConfig = field(default_factory=ApiConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{Path(self.state_dir).resolve() / 'neutrino.db'}"

    @property
    def public_url(self) -> str:
        return self.api.public_url.rstrip("/") or f"http://{self.api.host}:{self.api.port}"


ENV_PREFIX = "NEUTRINO_"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        return "" if value is None else str(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [str(v) for v in value]
    if origin is dict:
        if isinstance(value, str):  # "physnet1:eth1,physnet2:eth2"
            pairs = [p.split(":", 1) for p in value.split(",") if p.strip()]
            value = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(annotation, types.UnionType):
        return value
    raise ConfigError(f"{where}: unsupported type")


def _apply(obj: Any, data: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a section (mapping)")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}".lstrip(".")))


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
         state_dir: str | None = None) -> Config:
    """Read the file (if any), then environment overrides; raise ConfigError on anything unknown."""
    env = dict(os.environ if env is None else env)
    cfg = Config()
    if state_dir:
        cfg.state_dir = state_dir
    elif env.get(ENV_PREFIX + "STATE_DIR"):
        cfg.state_dir = env[ENV_PREFIX + "STATE_DIR"]
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    if path is None and (Path(cfg.state_dir) / "neutrino.yaml").exists():
        path = Path(cfg.state_dir) / "neutrino.yaml"
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        if state_dir:
            data.pop("state_dir", None)
        _apply(cfg, data, "")
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        value = yaml.safe_load(raw) if raw != "" else ""
        _apply(cfg, {section: {key: value}}, "env")
    return cfg
