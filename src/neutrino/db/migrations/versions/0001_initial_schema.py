"""Initial schema: networks, subnets, ports, IPAM, tags, quotas, agents, DHCP bindings, change feed, identity.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 23:45:46.717650
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("agent_type", sa.String(length=64), nullable=False),
        sa.Column("binary", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("availability_zone", sa.String(length=255), nullable=True),
        sa.Column("admin_state_up", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("configurations", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("agent_type", "host", name="uq_agents_type_host"),
    )
    op.create_table(
        "changes",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_changes")),
    )
    op.create_table(
        "identity_projects",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("domain_id", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_projects")),
        sa.UniqueConstraint("domain_id", "name", name="uq_identity_projects_name"),
    )
    op.create_table(
        "identity_roles",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_roles")),
        sa.UniqueConstraint("name", name=op.f("uq_identity_roles_name")),
    )
    op.create_table(
        "identity_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("methods", sa.String(length=64), nullable=False),
        sa.Column("audit_id", sa.String(length=32), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_identity_tokens")),
    )
    with op.batch_alter_table("identity_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_tokens_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "identity_users",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("domain_id", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("default_project_id", sa.String(length=64), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_users")),
        sa.UniqueConstraint("domain_id", "name", name="uq_identity_users_name"),
    )
    op.create_table(
        "networks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("revision_number", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("admin_state_up", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("router_external", sa.Boolean(), nullable=False),
        sa.Column("mtu", sa.Integer(), nullable=False),
        sa.Column("network_type", sa.String(length=32), nullable=False),
        sa.Column("physical_network", sa.String(length=64), nullable=True),
        sa.Column("segmentation_id", sa.Integer(), nullable=True),
        sa.Column("port_security_enabled", sa.Boolean(), nullable=False),
        sa.Column("dns_domain", sa.String(length=255), nullable=False),
        sa.Column("availability_zone_hints", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_networks")),
        sa.UniqueConstraint("network_type", "physical_network", "segmentation_id", name="uq_networks_segment"),
    )
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_networks_project_id"), ["project_id"], unique=False)

    op.create_table(
        "quotas",
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("resource", sa.String(length=64), nullable=False),
        sa.Column("hard_limit", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "resource", name=op.f("pk_quotas")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    op.create_table(
        "tags",
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.UniqueConstraint("resource_id", "tag", name="uq_tags_resource_tag"),
    )
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.create_index("ix_tags_resource", ["resource_id"], unique=False)
        batch_op.create_index("ix_tags_tag", ["tag"], unique=False)

    op.create_table(
        "dhcp_bindings",
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_dhcp_bindings_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_dhcp_bindings_network_id_networks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("network_id", "agent_id", name=op.f("pk_dhcp_bindings")),
    )
    op.create_table(
        "identity_assignments",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("role_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["identity_projects.id"],
            name=op.f("fk_identity_assignments_project_id_identity_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["identity_roles.id"],
            name=op.f("fk_identity_assignments_role_id_identity_roles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["identity_users.id"],
            name=op.f("fk_identity_assignments_user_id_identity_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "project_id", "role_id", name=op.f("pk_identity_assignments")),
    )
    op.create_table(
        "ports",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("revision_number", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("mac_address", sa.String(length=32), nullable=False),
        sa.Column("admin_state_up", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("device_owner", sa.String(length=255), nullable=False),
        sa.Column("port_security_enabled", sa.Boolean(), nullable=False),
        sa.Column("security_groups", sa.JSON(), nullable=False),
        sa.Column("allowed_address_pairs", sa.JSON(), nullable=False),
        sa.Column("extra_dhcp_opts", sa.JSON(), nullable=False),
        sa.Column("binding_host_id", sa.String(length=255), nullable=False),
        sa.Column("binding_vnic_type", sa.String(length=32), nullable=False),
        sa.Column("binding_vif_type", sa.String(length=64), nullable=False),
        sa.Column("binding_vif_details", sa.JSON(), nullable=False),
        sa.Column("binding_profile", sa.JSON(), nullable=False),
        sa.Column("dns_name", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_ports_network_id_networks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ports")),
        sa.UniqueConstraint("network_id", "mac_address", name="uq_ports_network_mac"),
    )
    with op.batch_alter_table("ports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ports_binding_host_id"), ["binding_host_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ports_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ports_network_id"), ["network_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ports_project_id"), ["project_id"], unique=False)

    op.create_table(
        "subnets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("revision_number", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("ip_version", sa.Integer(), nullable=False),
        sa.Column("cidr", sa.String(length=64), nullable=False),
        sa.Column("gateway_ip", sa.String(length=64), nullable=True),
        sa.Column("enable_dhcp", sa.Boolean(), nullable=False),
        sa.Column("ipv6_ra_mode", sa.String(length=32), nullable=True),
        sa.Column("ipv6_address_mode", sa.String(length=32), nullable=True),
        sa.Column("allocation_pools", sa.JSON(), nullable=False),
        sa.Column("dns_nameservers", sa.JSON(), nullable=False),
        sa.Column("host_routes", sa.JSON(), nullable=False),
        sa.Column("service_types", sa.JSON(), nullable=False),
        sa.Column("subnetpool_id", sa.String(length=36), nullable=True),
        sa.Column("segment_id", sa.String(length=36), nullable=True),
        sa.Column("dns_publish_fixed_ip", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_subnets_network_id_networks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subnets")),
    )
    with op.batch_alter_table("subnets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subnets_network_id"), ["network_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_subnets_project_id"), ["project_id"], unique=False)

    op.create_table(
        "ipallocations",
        sa.Column("port_id", sa.String(length=36), nullable=False),
        sa.Column("subnet_id", sa.String(length=36), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["port_id"], ["ports.id"], name=op.f("fk_ipallocations_port_id_ports"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["subnet_id"], ["subnets.id"], name=op.f("fk_ipallocations_subnet_id_subnets"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint("subnet_id", "ip_address", name="uq_ipallocations_subnet_ip"),
    )
    with op.batch_alter_table("ipallocations", schema=None) as batch_op:
        batch_op.create_index("ix_ipallocations_network", ["network_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ipallocations_port_id"), ["port_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("ipallocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ipallocations_port_id"))
        batch_op.drop_index("ix_ipallocations_network")

    op.drop_table("ipallocations")
    with op.batch_alter_table("subnets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subnets_project_id"))
        batch_op.drop_index(batch_op.f("ix_subnets_network_id"))

    op.drop_table("subnets")
    with op.batch_alter_table("ports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ports_project_id"))
        batch_op.drop_index(batch_op.f("ix_ports_network_id"))
        batch_op.drop_index(batch_op.f("ix_ports_device_id"))
        batch_op.drop_index(batch_op.f("ix_ports_binding_host_id"))

    op.drop_table("ports")
    op.drop_table("identity_assignments")
    op.drop_table("dhcp_bindings")
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_index("ix_tags_tag")
        batch_op.drop_index("ix_tags_resource")

    op.drop_table("tags")
    op.drop_table("settings")
    op.drop_table("quotas")
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_networks_project_id"))

    op.drop_table("networks")
    op.drop_table("identity_users")
    with op.batch_alter_table("identity_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_tokens_expires_at"))

    op.drop_table("identity_tokens")
    op.drop_table("identity_roles")
    op.drop_table("identity_projects")
    op.drop_table("changes")
    op.drop_table("agents")
