"""Security groups, their rules, port membership (a link table replacing the unchecked ports.security_groups
JSON column) and each project's default group.

Ports that were stored before groups existed named nothing real; an instance port (not a ``network:*``
device) with port security gets its project's ``default`` group, as Neutron would have given it, so that
turning filtering on keeps such ports reachable from their peers and able to send.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00
"""

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "securitygroups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("revision_number", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("stateful", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_securitygroups")),
    )
    op.create_index(op.f("ix_securitygroups_project_id"), "securitygroups", ["project_id"])
    op.create_table(
        "securitygrouprules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("security_group_id", sa.String(length=36), nullable=False),
        sa.Column("remote_group_id", sa.String(length=36), nullable=True),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("ethertype", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=40), nullable=True),
        sa.Column("port_range_min", sa.Integer(), nullable=True),
        sa.Column("port_range_max", sa.Integer(), nullable=True),
        sa.Column("remote_ip_prefix", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("revision_number", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["security_group_id"], ["securitygroups.id"], ondelete="CASCADE",
                                name=op.f("fk_securitygrouprules_security_group_id_securitygroups")),
        sa.ForeignKeyConstraint(["remote_group_id"], ["securitygroups.id"], ondelete="CASCADE",
                                name=op.f("fk_securitygrouprules_remote_group_id_securitygroups")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_securitygrouprules")),
    )
    for col in ("project_id", "security_group_id", "remote_group_id"):
        op.create_index(op.f(f"ix_securitygrouprules_{col}"), "securitygrouprules", [col])
    op.create_table(
        "securitygroupportbindings",
        sa.Column("port_id", sa.String(length=36), nullable=False),
        sa.Column("security_group_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["port_id"], ["ports.id"], ondelete="CASCADE",
                                name=op.f("fk_securitygroupportbindings_port_id_ports")),
        sa.ForeignKeyConstraint(["security_group_id"], ["securitygroups.id"],
                                name=op.f("fk_securitygroupportbindings_security_group_id_securitygroups")),
        sa.PrimaryKeyConstraint("port_id", "security_group_id", name=op.f("pk_securitygroupportbindings")),
    )
    op.create_index(op.f("ix_securitygroupportbindings_security_group_id"), "securitygroupportbindings",
                    ["security_group_id"])
    op.create_table(
        "default_security_groups",
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("security_group_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["security_group_id"], ["securitygroups.id"], ondelete="CASCADE",
                                name=op.f("fk_default_security_groups_security_group_id_securitygroups")),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_default_security_groups")),
        sa.UniqueConstraint("security_group_id", name=op.f("uq_default_security_groups_security_group_id")),
    )
    _default_groups_for_existing_ports()
    op.drop_column("ports", "security_groups")


def _default_groups_for_existing_ports() -> None:
    conn = op.get_bind()
    ports = sa.table("ports", sa.column("id"), sa.column("project_id"), sa.column("device_owner"),
                     sa.column("port_security_enabled", sa.Boolean()))
    rows = conn.execute(sa.select(ports.c.id, ports.c.project_id).where(
        ports.c.port_security_enabled.is_(True), ~ports.c.device_owner.startswith("network:"))
        .order_by(ports.c.project_id, ports.c.id)).all()
    if not rows:
        return
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    groups, rules, defaults, bindings = [], [], [], []
    by_project: dict[str, str] = {}
    for port_id, project_id in rows:
        if project_id not in by_project:
            sg = by_project[project_id] = str(uuid.uuid4())
            groups.append({"id": sg, "project_id": project_id, "name": "default",
                           "description": "Default security group", "revision_number": 0, "created_at": now,
                           "updated_at": now, "stateful": True})
            defaults.append({"project_id": project_id, "security_group_id": sg})
            for ethertype in ("IPv4", "IPv6"):
                for direction, remote in (("ingress", sg), ("egress", None)):
                    rules.append({"id": str(uuid.uuid4()), "project_id": project_id, "security_group_id": sg,
                                  "remote_group_id": remote, "direction": direction, "ethertype": ethertype,
                                  "protocol": None, "port_range_min": None, "port_range_max": None,
                                  "remote_ip_prefix": None, "description": "", "revision_number": 0,
                                  "created_at": now, "updated_at": now})
        bindings.append({"port_id": port_id, "security_group_id": by_project[project_id]})
    meta = sa.MetaData()
    meta.reflect(conn, only=["securitygroups", "securitygrouprules", "default_security_groups",
                             "securitygroupportbindings"])
    for table, values in (("securitygroups", groups), ("securitygrouprules", rules),
                          ("default_security_groups", defaults), ("securitygroupportbindings", bindings)):
        conn.execute(sa.insert(meta.tables[table]), values)


def downgrade() -> None:
    op.add_column("ports", sa.Column("security_groups", sa.JSON(), nullable=False, server_default="[]"))
    conn = op.get_bind()
    ports = sa.table("ports", sa.column("id"), sa.column("security_groups", sa.JSON()))
    links = sa.table("securitygroupportbindings", sa.column("port_id"), sa.column("security_group_id"))
    found: dict[str, list[str]] = {}
    for port_id, sg in conn.execute(sa.select(links.c.port_id, links.c.security_group_id)
                                    .order_by(links.c.port_id, links.c.security_group_id)):
        found.setdefault(port_id, []).append(sg)
    for port_id, groups in found.items():
        conn.execute(sa.update(ports).where(ports.c.id == port_id).values(security_groups=groups))
    op.drop_table("default_security_groups")
    op.drop_table("securitygroupportbindings")
    op.drop_table("securitygrouprules")
    op.drop_table("securitygroups")
