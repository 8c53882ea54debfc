"""Lab instances driven through the API as a hypervisor drives a user's VM.

Creating one makes its port on the server (the local socket of ``neutrino up``, or ``agent.server_url``;
device_owner ``compute:lab``, bound to this host) — in the security groups asked for, else in the
project's default group as Nova's VMs are, or without port security — then the kernel side
(``lab.instances``); deleting one removes both. An instance may instead take an existing port as it is
(its addresses and groups): deleting the instance then gives the port back, unbound, as Nova does.
``neutrino instance …`` (cli.py) prints what these return.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neutrino.client import Client, for_config
from neutrino.config import Config
from neutrino.errors import ClientError, NeutrinoError
from neutrino.intent.model import DeviceOwner
from neutrino.lab.instances import Instances, InstanceSpec, check_name

OWNER = DeviceOwner.LAB.value


async def _find(api: Client, collection: str, key: str, ref: str, **where: str) -> dict[str, Any]:
    """One resource by id, else by name (among those matching ``where``): exactly one must match."""
    with contextlib.suppress(ValueError):
        uuid.UUID(ref)
        try:
            found: dict[str, Any] = (await api.call("GET", f"/v2.0/{collection}/{ref}"))[key]
            return found
        except ClientError as exc:
            if exc.status != 404:
                raise
    items = (await api.call("GET", f"/v2.0/{collection}", params={"name": ref, **where}))[collection.replace("-", "_")]
    if len(items) != 1:
        what = collection.rstrip("s").replace("-", " ")
        raise NeutrinoError(f"{what} {ref!r}: {'not found' if not items else 'ambiguous name'}")
    return dict(items[0])


async def _network(api: Client, ref: str) -> dict[str, Any]:
    return await _find(api, "networks", "network", ref)


async def _groups(api: Client, refs: list[str]) -> list[str]:
    """Security group ids from names or ids; a name is looked up in the project the port will be in (the
    caller's: an admin sees every project's ``default``)."""
    if not refs:
        return []
    project = (await api.call("GET", "/v2.0/quotas/tenant"))["tenant"]["project_id"]
    return [(await _find(api, "security-groups", "security_group", ref, project_id=project))["id"] for ref in refs]


async def _adopt(api: Client, ref: str, device_id: str, host: str) -> dict[str, Any]:
    """An existing, unattached port, now the instance's and bound to this host (addresses, groups and
    port security as they are)."""
    port = await _find(api, "ports", "port", ref)
    if port["device_id"] or port["device_owner"]:
        raise NeutrinoError(f"port {ref!r} is in use by {port['device_owner'] or 'device'} {port['device_id']}")
    body = {"device_owner": OWNER, "device_id": device_id, "binding:host_id": host}
    adopted: dict[str, Any] = (await api.call("PUT", f"/v2.0/ports/{port['id']}", json={"port": body}))["port"]
    return adopted


async def _release(api: Client, port_id: str) -> None:
    """Give an adopted port back as it was found: no device, unbound (gone already is fine)."""
    try:
        await api.call("PUT", f"/v2.0/ports/{port_id}", json={"port": {
            "device_owner": "", "device_id": "", "binding:host_id": ""}})
    except ClientError as exc:
        if exc.status != 404:
            raise


def instances(cfg: Config) -> Instances:
    """This state dir's lab instances (kernel side and bookkeeping)."""
    return Instances(Path(cfg.state_dir).resolve() / "agent")


@dataclass(frozen=True, slots=True)
class PortChoice:
    """Where an instance's port comes from: a new one on ``network`` (with ``fixed_ips``; in
    ``security_groups`` by name or id, none given: the project's default group; or without port security),
    or the existing ``port``."""
    network: str | None = None
    fixed_ips: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    port_security: bool = True
    port: str | None = None


async def create(cfg: Config, name: str, choice: PortChoice, wait: float) -> InstanceSpec:
    check_name(name)
    inst = instances(cfg)
    if inst.load(name) is not None:
        raise NeutrinoError(f"instance {name} exists")
    async with for_config(cfg) as api:
        return await _create(api, inst, cfg, name, choice, wait)


async def _port(api: Client, name: str, choice: PortChoice, device_id: str, host: str) -> dict[str, Any]:
    if choice.port is not None:
        return await _adopt(api, choice.port, device_id, host)
    assert choice.network is not None
    net = await _network(api, choice.network)
    body: dict[str, Any] = {"network_id": net["id"], "name": name, "device_owner": OWNER, "device_id": device_id,
                            "binding:host_id": host}
    if choice.fixed_ips:
        body["fixed_ips"] = [{"ip_address": ip} for ip in choice.fixed_ips]
    if choice.security_groups:
        body["security_groups"] = await _groups(api, list(choice.security_groups))
    if not choice.port_security:
        body["port_security_enabled"] = False
    port: dict[str, Any] = (await api.call("POST", "/v2.0/ports", json={"port": body}))["port"]
    return port


async def _create(api: Client, inst: Instances, cfg: Config, name: str, choice: PortChoice,
                  wait: float) -> InstanceSpec:
    host = cfg.agent.host or socket.gethostname()
    port = await _port(api, name, choice, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}/{name}")), host)
    own = choice.port is None
    try:
        net = (await api.call("GET", f"/v2.0/networks/{port['network_id']}"))["network"]
        subnets = {s["id"]: s for s in (await api.call("GET", "/v2.0/subnets",
                                                       params={"network_id": net["id"]}))["subnets"]}
        mine = [subnets[f["subnet_id"]] for f in port["fixed_ips"]]
        v4 = [s for s in mine if s["ip_version"] == 4]
        spec = InstanceSpec(
            name=name, port_id=port["id"], network_id=net["id"], mac=port["mac_address"], mtu=net["mtu"],
            own_port=own,
            addresses=tuple(f"{f['ip_address']}/{ipaddress.ip_network(subnets[f['subnet_id']]['cidr']).prefixlen}"
                            for f in port["fixed_ips"]),
            gateway=v4[0]["gateway_ip"] if v4 else None, dhcp=any(s["enable_dhcp"] for s in v4),
            dhcp6=any(s["enable_dhcp"] and (s["ipv6_address_mode"] or "dhcpv6-stateful") == "dhcpv6-stateful"
                      for s in mine if s["ip_version"] == 6))
        # pyroute2 runs its own event loop: kernel work happens off this one.
        await asyncio.to_thread(inst.create, spec)
    except BaseException:
        await asyncio.to_thread(inst.delete, name)
        with contextlib.suppress(ClientError):  # the first error is the one to report
            if own:
                await api.call("DELETE", f"/v2.0/ports/{port['id']}")
            else:
                await _release(api, port["id"])
        raise
    await _connect(api, inst, spec)
    if wait and spec.dhcp and v4:
        ip = next(f["ip_address"] for f in port["fixed_ips"] if f["subnet_id"] == v4[0]["id"])
        await asyncio.to_thread(inst.wait_for_address, name, ip, wait)
    return spec


async def boot(cfg: Config, names: list[str]) -> list[InstanceSpec]:
    """Bring back instances whose kernel side is gone but whose record and port remain (their host lost
    power: ``neutrino lab host start``): the same port, MAC and addresses, a new namespace, tap and DHCP
    client, as a hypervisor restarts its VMs. Default: every instance of this state dir; one that runs
    is left alone. The instances brought back."""
    from neutrino.dataplane import netlink as nl

    inst = instances(cfg)
    specs = [inst.load(check_name(n)) for n in names] if names else inst.all()
    missing = [n for n, s in zip(names, specs, strict=True) if s is None] if names else []
    if missing:
        raise NeutrinoError(f"instance {', '.join(missing)} not found")
    present = set(await asyncio.to_thread(nl.list_namespaces))
    booted = [s for s in specs if s is not None and s.namespace not in present]
    for spec in booted:
        await asyncio.to_thread(inst.create, spec)
    async with for_config(cfg) as api:
        for spec in booted:
            await _connect(api, inst, spec)
    for spec in booted:
        v4 = [a.split("/")[0] for a in spec.addresses if ipaddress.ip_interface(a).version == 4]
        if spec.dhcp and v4:
            await asyncio.to_thread(inst.wait_for_address, spec.name, v4[0], 30.0)
    return booted


async def _connect(api: Client, inst: Instances, spec: InstanceSpec) -> None:
    """Once the agent has wired the port: the instance's DHCP clients, and a router solicitation where it
    forms a SLAAC address (what a VM does as it boots on a wired port)."""
    solicits = inst.solicits(spec)
    if spec.dhcp or spec.dhcp6 or solicits:
        await _wait_active(api, spec.port_id, 10.0)
    if solicits:
        await asyncio.to_thread(inst.solicit_router, spec)
    if spec.dhcp:
        await asyncio.to_thread(inst.start_dhcp, spec)
    if spec.dhcp6:
        await asyncio.to_thread(inst.start_dhcp, spec, 6)


async def _wait_active(api: Client, port_id: str, timeout: float) -> None:
    """The agent plugs the tap and reports the port ACTIVE; DHCP before that would shout into the void."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await api.call("GET", f"/v2.0/ports/{port_id}", params={"fields": "status"}))["port"]["status"] \
            != "ACTIVE":
        if loop.time() > deadline:
            print(f"warning: port {port_id} is not ACTIVE after {timeout:.0f} s: is this host's agent running?",
                  file=sys.stderr)
            return
        await asyncio.sleep(0.02)


async def delete(cfg: Config, name: str) -> InstanceSpec:
    """Delete the instance's port (an adopted one is given back unbound; gone already is fine), then its
    namespace and tap. The port goes first: when the server cannot be reached nothing is removed, and the
    same command can be run again."""
    inst = instances(cfg)
    spec = inst.load(check_name(name))
    if spec is None:
        raise NeutrinoError(f"instance {name} not found")
    async with for_config(cfg) as api:
        if not spec.own_port:
            await _release(api, spec.port_id)
        else:
            try:
                await api.call("DELETE", f"/v2.0/ports/{spec.port_id}")
            except ClientError as exc:
                if exc.status != 404:
                    raise
    await asyncio.to_thread(inst.delete, name)
    return spec
