"""The database schema: SQLAlchemy Core tables on one MetaData.

Core tables (not ORM classes) keep the hot paths — list 10,000 ports, create a port under lock — as a
handful of set-based statements. Alembic migrations under ``db/migrations`` create exactly these.
Sub-collections that are only ever read with their parent (dns_nameservers, host_routes,
allocation_pools, allowed_address_pairs, extra_dhcp_opts, binding details) are JSON columns; what must be
unique or filtered across rows (fixed IPs, tags, security group membership) has its own table.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(36)


def _standard() -> list[Column[object]]:
    """Standard attributes shared by every top-level resource."""
    return [
        Column("id", ID, primary_key=True),
        Column("project_id", String(255), nullable=False, index=True),
        Column("name", String(255), nullable=False, default=""),
        Column("description", String(255), nullable=False, default=""),
        Column("revision_number", BigInteger, nullable=False, default=0),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
    ]


networks = Table(
    "networks",
    metadata,
    *_standard(),
    Column("admin_state_up", Boolean, nullable=False, default=True),
    Column("status", String(16), nullable=False, default="ACTIVE"),
    Column("shared", Boolean, nullable=False, default=False),
    Column("router_external", Boolean, nullable=False, default=False),
    Column("mtu", Integer, nullable=False),
    Column("network_type", String(32), nullable=False),
    Column("physical_network", String(64), nullable=True),
    Column("segmentation_id", Integer, nullable=True),
    Column("port_security_enabled", Boolean, nullable=False, default=True),
    Column("dns_domain", String(255), nullable=False, default=""),
    Column("availability_zone_hints", JSON, nullable=False, default=list),
    UniqueConstraint("network_type", "physical_network", "segmentation_id", name="uq_networks_segment"),
)

subnets = Table(
    "subnets",
    metadata,
    *_standard(),
    Column("network_id", ID, ForeignKey("networks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("ip_version", Integer, nullable=False),
    Column("cidr", String(64), nullable=False),
    Column("gateway_ip", String(64), nullable=True),
    Column("enable_dhcp", Boolean, nullable=False, default=True),
    Column("ipv6_ra_mode", String(32), nullable=True),
    Column("ipv6_address_mode", String(32), nullable=True),
    Column("allocation_pools", JSON, nullable=False),
    Column("dns_nameservers", JSON, nullable=False),
    Column("host_routes", JSON, nullable=False),
    Column("service_types", JSON, nullable=False, default=list),
    Column("subnetpool_id", ID, nullable=True),
    Column("segment_id", ID, nullable=True),
    Column("dns_publish_fixed_ip", Boolean, nullable=False, default=False),
)

ports = Table(
    "ports",
    metadata,
    *_standard(),
    Column("network_id", ID, ForeignKey("networks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("mac_address", String(32), nullable=False),
    Column("admin_state_up", Boolean, nullable=False, default=True),
    Column("status", String(16), nullable=False, default="DOWN"),
    Column("device_id", String(255), nullable=False, default="", index=True),
    Column("device_owner", String(255), nullable=False, default=""),
    Column("port_security_enabled", Boolean, nullable=False, default=True),
    Column("allowed_address_pairs", JSON, nullable=False, default=list),
    Column("extra_dhcp_opts", JSON, nullable=False, default=list),
    Column("binding_host_id", String(255), nullable=False, default="", index=True),
    Column("binding_vnic_type", String(32), nullable=False, default="normal"),
    Column("binding_vif_type", String(64), nullable=False, default="unbound"),
    Column("binding_vif_details", JSON, nullable=False, default=dict),
    Column("binding_profile", JSON, nullable=False, default=dict),
    Column("dns_name", String(255), nullable=False, default=""),
    UniqueConstraint("network_id", "mac_address", name="uq_ports_network_mac"),
)

# One row per fixed IP of a port; the unique key is what makes double allocation impossible even if the
# allocator's lock were bypassed.
ipallocations = Table(
    "ipallocations",
    metadata,
    Column("port_id", ID, ForeignKey("ports.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("subnet_id", ID, ForeignKey("subnets.id", ondelete="CASCADE"), nullable=False),
    Column("network_id", ID, nullable=False),
    Column("ip_address", String(64), nullable=False),
    Column("position", Integer, nullable=False, default=0),
    UniqueConstraint("subnet_id", "ip_address", name="uq_ipallocations_subnet_ip"),
    Index("ix_ipallocations_network", "network_id"),
)

tags = Table(
    "tags",
    metadata,
    Column("resource_id", ID, nullable=False),
    Column("resource_type", String(32), nullable=False),
    Column("tag", String(255), nullable=False),
    UniqueConstraint("resource_id", "tag", name="uq_tags_resource_tag"),
    Index("ix_tags_tag", "tag"),
    Index("ix_tags_resource", "resource_id"),
)

quotas = Table(
    "quotas",
    metadata,
    Column("project_id", String(255), primary_key=True),
    Column("resource", String(64), primary_key=True),
    Column("hard_limit", Integer, nullable=False),
)

# Agents registered by hosts (one row per (host, agent_type)), refreshed by heartbeats.
agents = Table(
    "agents",
    metadata,
    Column("id", ID, primary_key=True),
    Column("agent_type", String(64), nullable=False),
    Column("binary", String(255), nullable=False),
    Column("topic", String(255), nullable=False, default=""),
    Column("host", String(255), nullable=False),
    Column("availability_zone", String(255), nullable=True),
    Column("admin_state_up", Boolean, nullable=False, default=True),
    Column("description", String(255), nullable=False, default=""),
    Column("configurations", JSON, nullable=False, default=dict),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("heartbeat_timestamp", DateTime, nullable=False),
    # The feed revision of the last snapshot the host's agent applied in full (its heartbeat says; NULL: an
    # agent that does not say). The change feed is pruned below the lowest of the live agents'.
    Column("revision", BigInteger, nullable=True),
    UniqueConstraint("agent_type", "host", name="uq_agents_type_host"),
)

# Which DHCP agents serve which networks.
dhcp_bindings = Table(
    "dhcp_bindings",
    metadata,
    Column("network_id", ID, ForeignKey("networks.id", ondelete="CASCADE"), primary_key=True),
    Column("agent_id", ID, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
)

# The ordered change feed: one row per committed change of any resource. Agents watch it by `seq`.
changes = Table(
    "changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("resource", String(32), nullable=False),
    Column("resource_id", ID, nullable=False),
    Column("op", String(8), nullable=False),  # create | update | delete
    Column("network_id", ID, nullable=True),
    Column("host", String(255), nullable=True),
    Column("at", DateTime, nullable=False),
)

# The API servers sharing this database, each refreshing its row while it runs (``neutrino status``).
servers = Table(
    "servers",
    metadata,
    Column("id", ID, primary_key=True),
    Column("url", String(255), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("heartbeat_at", DateTime, nullable=False),
)

# Server-side state that must survive restarts (e.g. the builtin identity's signing secret).
settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Routers: the external gateway is a network:router_gateway port (device_id = router id); `gw_network_id`
# names its network ('' = none); extra routes are JSON ({destination, nexthop}).
routers = Table(
    "routers",
    metadata,
    *_standard(),
    Column("admin_state_up", Boolean, nullable=False, default=True),
    Column("status", String(16), nullable=False, default="ACTIVE"),
    Column("gw_network_id", String(36), nullable=False, default=""),
    Column("enable_snat", Boolean, nullable=False, default=True),
    Column("routes", JSON, nullable=False, default=list),
)

# Which L3 agent hosts which router (one each).
router_bindings = Table(
    "router_bindings",
    metadata,
    Column("router_id", ID, ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True),
    Column("agent_id", ID, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False, index=True),
)

# Floating IPs: the address is held by a network:floatingip port on the external network.
floatingips = Table(
    "floatingips",
    metadata,
    *_standard(),
    Column("floating_network_id", ID, nullable=False, index=True),
    Column("floating_ip_address", String(64), nullable=False),
    Column("floating_port_id", ID, nullable=False),
    Column("port_id", String(36), nullable=True, index=True),
    Column("fixed_ip_address", String(64), nullable=True),
    Column("router_id", String(36), nullable=True, index=True),
    Column("status", String(16), nullable=False, default="DOWN"),
)

# Security groups and their rules. ``protocol`` is kept as the API shows it (a lower-case name or a number
# as text, "icmp" on an IPv6 rule already "ipv6-icmp"); ``remote_ip_prefix`` is normalised (host bits
# cleared). A rule naming a group as its remote goes with that group (CASCADE), as in Neutron.
securitygroups = Table(
    "securitygroups",
    metadata,
    *_standard(),
    Column("stateful", Boolean, nullable=False, default=True),
)

securitygrouprules = Table(
    "securitygrouprules",
    metadata,
    Column("id", ID, primary_key=True),
    Column("project_id", String(255), nullable=False, index=True),
    Column("security_group_id", ID, ForeignKey("securitygroups.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("remote_group_id", ID, ForeignKey("securitygroups.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("direction", String(16), nullable=False),
    Column("ethertype", String(8), nullable=False),
    Column("protocol", String(40), nullable=True),
    Column("port_range_min", Integer, nullable=True),
    Column("port_range_max", Integer, nullable=True),
    Column("remote_ip_prefix", String(64), nullable=True),
    Column("description", String(255), nullable=False, default=""),
    Column("revision_number", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# Which ports are in which groups: the link table (not a JSON column on ports) is what makes "the members
# of group G" one indexed join for the snapshot and "is G in use" one index probe. A group with members
# cannot be deleted (no CASCADE from the group side); a port takes its memberships along.
securitygroupportbindings = Table(
    "securitygroupportbindings",
    metadata,
    Column("port_id", ID, ForeignKey("ports.id", ondelete="CASCADE"), primary_key=True),
    Column("security_group_id", ID, ForeignKey("securitygroups.id"), primary_key=True, index=True),
)

# The `default` group of each project: the primary key makes two concurrent first requests of a project
# create one group (the loser's transaction fails on the key and is retried, finding the winner's).
default_security_groups = Table(
    "default_security_groups",
    metadata,
    Column("project_id", String(255), primary_key=True),
    Column("security_group_id", ID, ForeignKey("securitygroups.id", ondelete="CASCADE"), nullable=False,
           unique=True),
)
