"""The stock `openstack` CLI, unmodified, against a real server.

Each CLI call is a new process (about a second), so these tests prove only what the CLI itself does:
its commands and options for networks, subnets, ports, tags, quotas and extensions parse, reach the
server and print what it answered. They run against SQLite only (the CLI speaks HTTP: the backend is
not its business); the rules behind them are tested through openstacksdk on both backends
(test_core_sdk.py), which is many times faster.
"""

from __future__ import annotations

import uuid

import openstack
import pytest

from tests.api.conftest import Cli, identity

pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_network_subnet_port_lifecycle_with_cli(cli: Cli, admin: openstack.connection.Connection) -> None:
    net_name = name("net")
    net = cli("network", "create", net_name, "--description", "made by the CLI", "--tag", "red", "--tag", "blue")
    assert net["name"] == net_name and net["status"] == "ACTIVE" and net["mtu"] == 1450
    assert net["provider:network_type"] == "vxlan" and net["provider:segmentation_id"] >= 1
    assert sorted(net["tags"]) == ["blue", "red"]

    assert [n["ID"] for n in cli("network", "list", "--tags", "red,blue")] == [net["id"]]
    cli("network", "set", net["id"], "--name", net_name + "-renamed", "--no-tag", "--tag", "green", fmt=False)
    shown = admin.network.get_network(net["id"])
    assert shown.name == net_name + "-renamed" and shown.tags == ["green"]

    subnet = cli("subnet", "create", name("sub"), "--network", net["id"], "--subnet-range", "192.0.2.0/24",
                 "--dns-nameserver", "192.0.2.53", "--allocation-pool", "start=192.0.2.10,end=192.0.2.20",
                 "--no-dhcp")
    assert subnet["cidr"] == "192.0.2.0/24" and subnet["gateway_ip"] == "192.0.2.1"
    assert subnet["allocation_pools"] == [{"start": "192.0.2.10", "end": "192.0.2.20"}]
    assert subnet["dns_nameservers"] == ["192.0.2.53"]

    port = cli("port", "create", name("port"), "--network", net["id"], "--fixed-ip",
               f"subnet={subnet['id']},ip-address=192.0.2.15")
    assert port["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "192.0.2.15"}]
    assert port["mac_address"].startswith("fa:16:3e:")
    shown_port = cli("port", "show", port["id"])
    assert shown_port["id"] == port["id"] and shown_port["status"] == "DOWN"

    cli("port", "delete", port["id"], fmt=False)
    cli("subnet", "delete", subnet["id"], fmt=False)
    cli("network", "delete", net["id"], fmt=False)
    assert admin.network.find_network(net["id"]) is None and admin.network.find_subnet(subnet["id"]) is None


def test_cli_extensions_and_quota(cli: Cli, admin: openstack.connection.Connection) -> None:
    aliases = {e["Alias"] for e in cli("extension", "list", "--network")}
    assert {"quotas", "binding", "external-net", "standard-attr-tag", "pagination", "sorting"} <= aliases
    assert "address-group" not in aliases  # only what is implemented is listed
    project = identity(admin).create_project(name=name("quota"), domain_id="default")
    cli("quota", "set", "--networks", "7", "--ports", "70", project.id, fmt=False)  # it sends check_limit
    shown = {row["Resource"]: row["Limit"] for row in cli("quota", "show", "--network", project.id)}
    assert shown["networks"] == 7 and shown["ports"] == 70, shown
