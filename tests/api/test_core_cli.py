"""The stock `openstack` CLI, unmodified, against a real server (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid

from tests.api.conftest import Cli


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_network_subnet_port_lifecycle_with_cli(cli: Cli) -> None:
    net_name = name("net")
    net = cli("network", "create", net_name, "--description", "made by the CLI")
    assert net["name"] == net_name and net["status"] == "ACTIVE" and net["mtu"] == 1450
    assert net["provider:network_type"] == "vxlan" and net["provider:segmentation_id"] >= 1

    listed = cli("network", "list")
    assert net["id"] in {n["ID"] for n in listed}

    subnet = cli("subnet", "create", name("sub"), "--network", net_name, "--subnet-range", "192.0.2.0/24",
                 "--dns-nameserver", "192.0.2.53", "--allocation-pool", "start=192.0.2.10,end=192.0.2.20",
                 "--no-dhcp")
    assert subnet["cidr"] == "192.0.2.0/24" and subnet["gateway_ip"] == "192.0.2.1"
    assert subnet["allocation_pools"] == [{"start": "192.0.2.10", "end": "192.0.2.20"}]
    assert subnet["dns_nameservers"] == ["192.0.2.53"]

    port = cli("port", "create", name("port"), "--network", net_name, "--fixed-ip",
               f"subnet={subnet['id']},ip-address=192.0.2.15")
    assert port["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "192.0.2.15"}]
    assert port["mac_address"].startswith("fa:16:3e:")

    auto = cli("port", "create", name("port"), "--network", net_name)
    assert auto["fixed_ips"][0]["ip_address"] == "192.0.2.10"

    shown = cli("port", "show", port["id"])
    assert shown["id"] == port["id"] and shown["status"] == "DOWN"

    # The network has ports: deleting it must fail and change nothing.
    failed = cli("network", "delete", net_name, check=False, fmt=False)
    assert failed.returncode != 0
    assert cli("network", "show", net["id"])["id"] == net["id"]

    cli("port", "delete", port["id"], auto["id"], fmt=False)
    cli("subnet", "delete", subnet["id"], fmt=False)
    cli("network", "delete", net_name, fmt=False)
    assert net["id"] not in {n["ID"] for n in cli("network", "list")}


def test_cli_tags_and_filters(cli: Cli) -> None:
    net = cli("network", "create", name("tagged"), "--tag", "red", "--tag", "blue")
    assert sorted(net["tags"]) == ["blue", "red"]
    found = cli("network", "list", "--tags", "red,blue")
    assert [n["ID"] for n in found] == [net["id"]]
    assert net["id"] not in {n["ID"] for n in cli("network", "list", "--not-tags", "red")}
    cli("network", "unset", "--tag", "red", net["id"], fmt=False)
    assert cli("network", "show", net["id"])["tags"] == ["blue"]
    cli("network", "delete", net["id"], fmt=False)


def test_cli_extensions_and_quota(cli: Cli) -> None:
    aliases = {e["Alias"] for e in cli("extension", "list", "--network")}
    assert {"quotas", "binding", "external-net", "standard-attr-tag", "pagination", "sorting"} <= aliases
    assert "router" not in aliases  # only what is implemented is listed
