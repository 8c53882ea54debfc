"""Scale out: the revision each agent has applied (the change feed is pruned below the live agents'
lowest), and the API servers sharing the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 10:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("revision", sa.BigInteger(), nullable=True))
    op.create_table(
        "servers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_servers")),
    )


def downgrade() -> None:
    op.drop_table("servers")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("revision")
