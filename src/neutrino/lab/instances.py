"""Lab instances, kernel side: a namespace standing in for a VM, wired like one.

An instance ``NAME`` is the namespace ``lab-NAME`` holding ``eth0`` (the port's MAC, the network's MTU),
whose veth peer ``tap<11 of port id>`` stays on the host for the agent to plug into the network's
bridge — as a hypervisor creates a VM's tap and Neutron's agent plugs it. Inside, a real ``dhclient``
asks dnsmasq for the address; without DHCP the instance is configured statically from its port, as a
user would on a console. Bookkeeping lives in ``<state>/instances/NAME/instance.json``.

Ownership (``dataplane.ownership``): the tap and eth0 carry this neutrino's mark with creator ``lab`` in
their ifalias (the agent plugs such a tap but never removes it); the instance's record is its bookkeeping
directory. ``sweep`` removes marked lab taps and ``lab-*`` namespaces of THIS neutrino that no record
names (e.g. a state dir's ``instances/`` emptied by hand); another neutrino's are never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from neutrino.compile.state import tap_name
from neutrino.dataplane import netlink as nl
from neutrino.dataplane import ownership as own
from neutrino.errors import KernelError

SCRIPT = Path(__file__).with_name("dhclient-script")
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,10}$")
DHCLIENT_CONF = ("option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n"
                 "request subnet-mask, broadcast-address, routers, interface-mtu, domain-name-servers, "
                 "host-name, rfc3442-classless-static-routes;\ninitial-interval 1;\ntimeout 30;\nretry 1;\n")


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    name: str
    port_id: str
    network_id: str
    mac: str
    mtu: int
    addresses: tuple[str, ...]   # ip/prefix of the port's fixed IPs
    gateway: str | None
    dhcp: bool                   # one of its IPv4 subnets has DHCP enabled
    dhcp6: bool = False          # one of its IPv6 subnets is dhcpv6-stateful (SLAAC needs no client)
    own_port: bool = True        # made for the instance (deleted with it); False: an existing port it used

    @property
    def namespace(self) -> str:
        return f"lab-{self.name}"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"instance name {name!r}: use 1-11 lower-case letters, digits or '-'")
    return name


def _slaac(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bool:
    """An EUI-64 address (ff:fe in the middle of the interface id): the kernel forms it from RAs."""
    return iface.version == 6 and (int(iface.ip) >> 24) & 0xFFFF == 0xFFFE


class Instances:
    """The lab instances of one neutrino. ``state_dir`` is its agent directory (``<state>/agent``);
    ``owner`` its owner id (default: the one kept in the neutrino state dir, ``state_dir``'s parent)."""

    def __init__(self, state_dir: Path, owner: str | None = None) -> None:
        self.root = state_dir / "instances"
        self.owner = owner if owner is not None else own.owner_id(state_dir.resolve().parent)
        self.mark = own.mark(self.owner, own.Creator.LAB)

    def dir(self, name: str) -> Path:
        return self.root / name

    def load(self, name: str) -> InstanceSpec | None:
        try:
            data = json.loads((self.dir(name) / "instance.json").read_text())
            return InstanceSpec(**{**data, "addresses": tuple(data["addresses"])})
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[InstanceSpec]:
        if not self.root.exists():
            return []
        return [s for s in (self.load(d.name) for d in sorted(self.root.iterdir())) if s is not None]

    def create(self, spec: InstanceSpec) -> None:
        d = self.dir(spec.name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "instance.json").write_text(json.dumps(asdict(spec), indent=1))
        nl.create_namespace(spec.namespace)
        with nl.socket() as sock:
            nl.add_veth(sock, tap_name(spec.port_id), "eth0", spec.namespace, spec.mtu)
            nl.set_link(sock, tap_name(spec.port_id), ifalias=self.mark)
            nl.set_link(sock, tap_name(spec.port_id), state="up")
        with nl.socket(spec.namespace) as sock:
            nl.set_link(sock, "eth0", spec.namespace, address=spec.mac, ifalias=self.mark)
            nl.set_link(sock, "lo", spec.namespace, state="up")
            # No DAD on the instance's link: dhclient -6 needs a usable link-local address at once, and
            # every address on this link is handed out by IPAM anyway.
            subprocess.run(["ip", "netns", "exec", spec.namespace, "sysctl", "-qw",
                            "net.ipv6.conf.eth0.accept_dad=0"], check=False, capture_output=True)
            nl.set_link(sock, "eth0", spec.namespace, state="up")
            idx = nl.index(sock, "eth0")
            assert idx is not None
            for addr in spec.addresses:  # what no DHCP client will configure: like a console user would
                iface = ipaddress.ip_interface(addr)
                if (iface.version == 4 and not spec.dhcp) or (iface.version == 6 and not spec.dhcp6 and
                                                              not _slaac(iface)):
                    nl.add_address(sock, idx, iface, "eth0", spec.namespace)
            if not spec.dhcp and spec.gateway:
                nl.replace_default_route(sock, spec.gateway, idx, "eth0", spec.namespace)

    @staticmethod
    def solicits(spec: InstanceSpec) -> bool:
        """Whether the instance forms an address from router advertisements (a SLAAC one among its own)."""
        return any(_slaac(ipaddress.ip_interface(a)) for a in spec.addresses)

    def solicit_router(self, spec: InstanceSpec) -> None:
        """A router solicitation from the instance's eth0 to all routers, as a VM sends when it boots on a
        port that is wired: the kernel sent its own when eth0 came up, before the agent plugged the tap,
        and the next goes 4 s later (or the router's next unsolicited advertisement, up to 10 s). Best
        effort: the kernel's own solicitations still follow."""
        def send() -> None:
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # neighbour discovery
                # type 133, code 0, checksum (the kernel fills it for ICMPv6), reserved
                sock.sendto(bytes([133, 0, 0, 0, 0, 0, 0, 0]), ("ff02::2", 0, 0, socket.if_nametoindex("eth0")))
        with contextlib.suppress(OSError):
            nl._socket_in(spec.namespace, send)

    def start_dhcp(self, spec: InstanceSpec, version: int = 4) -> None:
        """Start the instance's DHCP client (once its tap is plugged, so the first DISCOVER is heard)."""
        d = self.dir(spec.name)
        (d / "dhclient.conf").write_text(DHCLIENT_CONF)
        tag = "" if version == 4 else "6"
        argv = ["ip", "netns", "exec", spec.namespace, "dhclient", f"-{version}", "-nw", "-cf",
                str(d / "dhclient.conf"), "-sf", str(SCRIPT), "-pf", str(d / f"dhclient{tag}.pid"),
                "-lf", str(d / f"dhclient{tag}.leases"), "eth0"]
        # A file, not a pipe, for the daemon's output (see dataplane.dnsmasq: no SIGPIPE later).
        with open(d / "dhclient.log", "w") as out:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                  check=False)
        if proc.returncode != 0:
            raise KernelError(f"dhclient failed: {(d / 'dhclient.log').read_text().strip()}", obj=spec.name,
                              namespace=spec.namespace)

    def exec(self, name: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            ["ip", "netns", "exec", f"lab-{check_name(name)}", *argv], text=True, check=False, **kw)
        return done

    def address(self, name: str) -> list[str]:
        """The instance's global IPv4/IPv6 addresses, as ``ip/prefix``."""
        with nl.socket(f"lab-{name}") as sock:
            idx = nl.index(sock, "eth0")
            return sorted(str(a.interface) for a in nl.addresses(sock) if a.link == idx)

    def wait_for_address(self, name: str, ip: str, timeout: float = 30.0) -> float:
        """Poll until ``ip`` is on the instance's eth0; returns seconds waited."""
        start = time.monotonic()
        while True:
            if any(a.split("/")[0] == ip for a in self.address(name)):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"instance {name} did not get {ip} in {timeout:.0f} s "
                                   f"(has {self.address(name) or 'nothing'})")
            time.sleep(0.01)

    def delete(self, name: str) -> InstanceSpec | None:
        spec = self.load(name)
        d = self.dir(name)
        for pid_file in (d / "dhclient.pid", d / "dhclient6.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        if f"lab-{name}" in nl.list_namespaces():
            nl.remove_namespace(f"lab-{name}")  # the veth pair, tap included, goes with it
        if spec is not None:
            with nl.socket() as sock:
                nl.delete_link(sock, tap_name(spec.port_id))
        for f in sorted(d.glob("*")):
            f.unlink(missing_ok=True)
        if d.exists():
            d.rmdir()
        return spec

    def orphans(self) -> tuple[list[str], list[str]]:
        """(taps, namespaces) marked as this neutrino's lab objects that no instance record names."""
        recorded = self.all()
        taps = {tap_name(s.port_id) for s in recorded}
        names = {s.namespace for s in recorded}
        lab_taps = own.prefixes(own.Creator.LAB, own.Scope.HOST)
        with nl.socket() as sock:
            stray_taps = sorted(link.name for link in nl.links(sock)
                                if link.name.startswith(lab_taps) and link.name not in taps
                                and own.owned_by(link.alias, self.owner, own.Creator.LAB))
        stray_ns = []
        for ns in nl.list_namespaces():
            if not ns.startswith("lab-") or ns in names:
                continue
            with nl.socket(ns) as sock:
                if any(link.name == "eth0" and own.owned_by(link.alias, self.owner, own.Creator.LAB)
                       for link in nl.links(sock)):
                    stray_ns.append(ns)
        return stray_taps, stray_ns

    def sweep(self) -> list[str]:
        """Remove this neutrino's orphaned lab taps and namespaces; returns what went."""
        taps, namespaces = self.orphans()
        for ns in namespaces:
            nl.remove_namespace(ns)  # its eth0's tap goes with it
        with nl.socket() as sock:
            present = {link.name for link in nl.links(sock)}
            for tap in taps:
                if tap in present:
                    nl.delete_link(sock, tap)
        return namespaces + taps
