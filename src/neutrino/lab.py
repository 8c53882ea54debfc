"""``neutrino instance …``: lab instances driven through the API like a user's VM would be.

The command talks to the server (the local socket of ``neutrino up``, or ``agent.server_url``), creates
or deletes the instance's port (device_owner ``compute:lab``, bound to this host), and does the kernel
side through ``agent.instances``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from neutrino.agent.instances import Instances, InstanceSpec, check_name
from neutrino.agent.source import client_for, password_token
from neutrino.config import Config
from neutrino.errors import NeutrinoError
from neutrino.identity.credentials import admin_password
from neutrino.intent.model import DeviceOwner

OWNER = DeviceOwner.LAB.value


class Api:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        sock = Path(cfg.state_dir).resolve() / cfg.api.socket if cfg.api.socket else None
        if cfg.agent.server_url:
            self.url = cfg.agent.server_url
            self.creds: tuple[str, str, str] | None = (cfg.agent.username, cfg.agent.password, cfg.agent.project)
        else:
            self.url = f"unix:{sock}" if sock is not None and sock.exists() else cfg.public_url
            self.creds = None  # the identity admin's, looked up when a token is first needed
        self.token = ""

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        if not self.token and self.cfg.identity.mode != "noauth":
            if self.creds is None:
                i = self.cfg.identity
                self.creds = (i.admin_user, admin_password(self.cfg), i.admin_project)  # config, else generated
            base, auth_path = (self.cfg.agent.auth_url, "") if self.cfg.agent.auth_url else (self.url, "/identity/v3")
            self.token = await password_token(base, auth_path, *self.creds)
        async with client_for(self.url, 30) as client:
            resp = await client.request(method, path, headers={"X-Auth-Token": self.token}, **kw)
        if resp.status_code >= 400:
            try:
                msg = resp.json()["NeutronError"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = resp.text
            raise NeutrinoError(f"{method} {path}: {resp.status_code} {msg}")
        return resp.json() if resp.content else None


async def _network(api: Api, ref: str) -> dict[str, Any]:
    try:
        uuid.UUID(ref)
        found: dict[str, Any] = (await api.call("GET", f"/v2.0/networks/{ref}"))["network"]
        return found
    except (ValueError, NeutrinoError):
        nets = (await api.call("GET", "/v2.0/networks", params={"name": ref}))["networks"]
        if len(nets) != 1:
            raise NeutrinoError(f"network {ref!r}: {'not found' if not nets else 'ambiguous name'}") from None
        return dict(nets[0])


async def create(cfg: Config, name: str, network: str, fixed_ips: list[str], wait: float) -> InstanceSpec:
    check_name(name)
    inst = Instances(Path(cfg.state_dir).resolve() / "agent")
    if inst.load(name) is not None:
        raise NeutrinoError(f"instance {name} exists")
    api = Api(cfg)
    net = await _network(api, network)
    host = cfg.agent.host or socket.gethostname()
    body: dict[str, Any] = {"network_id": net["id"], "name": name, "device_owner": OWNER,
                            "device_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}/{name}")),
                            "binding:host_id": host}
    if fixed_ips:
        body["fixed_ips"] = [{"ip_address": ip} for ip in fixed_ips]
    port = (await api.call("POST", "/v2.0/ports", json={"port": body}))["port"]
    try:
        subnets = {s["id"]: s for s in (await api.call("GET", "/v2.0/subnets",
                                                       params={"network_id": net["id"]}))["subnets"]}
        mine = [subnets[f["subnet_id"]] for f in port["fixed_ips"]]
        v4 = [s for s in mine if s["ip_version"] == 4]
        spec = InstanceSpec(
            name=name, port_id=port["id"], network_id=net["id"], mac=port["mac_address"], mtu=net["mtu"],
            addresses=tuple(f"{f['ip_address']}/{ipaddress.ip_network(subnets[f['subnet_id']]['cidr']).prefixlen}"
                            for f in port["fixed_ips"]),
            gateway=v4[0]["gateway_ip"] if v4 else None, dhcp=any(s["enable_dhcp"] for s in v4),
            dhcp6=any(s["enable_dhcp"] and (s["ipv6_address_mode"] or "dhcpv6-stateful") == "dhcpv6-stateful"
                      for s in mine if s["ip_version"] == 6))
        # pyroute2 runs its own event loop: kernel work happens off this one.
        await asyncio.to_thread(inst.create, spec)
    except BaseException:
        await asyncio.to_thread(inst.delete, name)
        await api.call("DELETE", f"/v2.0/ports/{port['id']}")
        raise
    if spec.dhcp or spec.dhcp6:
        await _wait_active(api, port["id"], 10.0)
    if spec.dhcp:
        await asyncio.to_thread(inst.start_dhcp, spec)
    if spec.dhcp6:
        await asyncio.to_thread(inst.start_dhcp, spec, 6)
    if wait and spec.dhcp and v4:
        ip = next(f["ip_address"] for f in port["fixed_ips"] if f["subnet_id"] == v4[0]["id"])
        await asyncio.to_thread(inst.wait_for_address, name, ip, wait)
    return spec


async def _wait_active(api: Api, port_id: str, timeout: float) -> None:
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


async def delete(cfg: Config, name: str) -> None:
    inst = Instances(Path(cfg.state_dir).resolve() / "agent")
    spec = await asyncio.to_thread(inst.delete, check_name(name))
    if spec is None:
        raise NeutrinoError(f"instance {name} not found")
    api = Api(cfg)
    try:
        await api.call("DELETE", f"/v2.0/ports/{spec.port_id}")
    except NeutrinoError as exc:
        if "404" not in str(exc):
            raise


def main(cfg: Config, action: str, args: Any) -> int:
    inst = Instances(Path(cfg.state_dir).resolve() / "agent")
    try:
        if action == "create":
            spec = asyncio.run(create(cfg, args.name, args.network, args.fixed_ip or [], args.wait))
            got = inst.address(spec.name)
            print(f"instance {spec.name}: port {spec.port_id}, {', '.join(got) or 'no address yet'} "
                  f"({'DHCP' if spec.dhcp else 'static'})")
        elif action == "list":
            for spec in inst.all():
                print(f"{spec.name:<12} {spec.port_id}  {', '.join(spec.addresses):<30} "
                      f"{'dhcp' if spec.dhcp else 'static'}  now: {', '.join(inst.address(spec.name)) or '-'}")
        elif action == "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return inst.exec(args.name, argv).returncode
        elif action == "delete":
            asyncio.run(delete(cfg, args.name))
            print(f"instance {args.name} deleted")
    except (NeutrinoError, ValueError, TimeoutError) as exc:
        print(f"neutrino instance {action}: {exc}", file=sys.stderr)
        return 1
    return 0
