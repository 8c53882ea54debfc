"""Routers (pure): what one router scheduled here is on the host -- Neutron's ``qrouter`` namespace.

A router is the namespace ``qrouter-<router id>`` with one veth per router port (the same ``PortLinkSpec``
as a DHCP port): ``qr-<11>`` for each ``network:router_interface`` port, in its network's bridge, with the
port's addresses (usually the subnets' gateways); ``qg-<11>`` for the ``network:router_gateway`` port, in
the external network's bridge (a flat network's bridge is plugged into the mapped physical interface), with
the gateway address plus every floating IP as a /32. Routes (protocol 78, routes plane): the on-link route
to the external gateway when it lies outside the ``qg-`` subnet, the default route via it (IPv4 and, when
the gateway port has an IPv6 address on a subnet with a gateway, IPv6), and each extra route via the router
port whose subnet holds its nexthop. NAT is one ``ip`` table in the namespace (nft plane, one atomic
transaction per change): per floating IP a 1:1 DNAT (prerouting) and SNAT (postrouting, before the generic
rule), hairpin NAT for instances reaching each other by floating IP, and with ``enable_snat`` traffic from
the internal subnets leaving ``qg-`` rewritten to the gateway address. Sysctls: forwarding on, loose
rp_filter (floating IPs make paths asymmetric), ``arp_notify`` on ``qg-`` (gratuitous ARP when it comes up).

A router with admin_state_up False is not realised (its namespace goes, as Neutron takes it down).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from neutrino.compile.daemons import DIR, DaemonSpec
from neutrino.compile.nft import NftTable
from neutrino.compile.state import (
    Interface,
    Network,
    PortLinkSpec,
    RouteSpec,
    SysctlSpec,
    bridge_name,
    short,
    tap_name,
)
from neutrino.intent.model import DeviceOwner, PortSpec, RouterSpec, Snapshot, SubnetSpec

DEFAULT_V4 = ipaddress.IPv4Network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.IPv6Network("::/0")
ROUTER_PORT_OWNERS = (DeviceOwner.ROUTER_INTERFACE, DeviceOwner.ROUTER_GATEWAY)


def namespace(router_id: str) -> str:
    return f"qrouter-{router_id}"


def device(port: PortSpec) -> str:
    return f"{'qg' if port.device_owner == DeviceOwner.ROUTER_GATEWAY else 'qr'}-{short(port.id)}"


@dataclass(frozen=True, slots=True)
class CompiledRouter:
    namespace: str
    links: tuple[PortLinkSpec, ...]
    routes: tuple[RouteSpec, ...]
    nft: NftTable
    sysctls: tuple[SysctlSpec, ...]
    daemons: tuple[DaemonSpec, ...]
    problems: tuple[str, ...]


RouterPorts = dict[str, list[PortSpec]]  # router id -> its ports (router_ports_index)


def _port_order(p: PortSpec) -> tuple[bool, str]:
    return (p.device_owner != DeviceOwner.ROUTER_GATEWAY, p.id)


def router_ports_index(snap: Snapshot) -> RouterPorts:
    """Every router's ports, gateway first then by id: one look at the snapshot's ports for all routers
    (looking per router made compiling 1,000 routers quadratic: ~6 million port checks a pass)."""
    out: RouterPorts = {}
    for p in snap.ports.values():
        if p.device_owner in ROUTER_PORT_OWNERS:
            out.setdefault(p.device_id, []).append(p)
    for ports in out.values():
        ports.sort(key=_port_order)
    return out


def router_ports(snap: Snapshot, router: RouterSpec, index: RouterPorts | None = None) -> list[PortSpec]:
    if index is not None:
        return list(index.get(router.id, ()))
    return sorted((p for p in snap.ports.values() if p.device_id == router.id and p.device_owner in ROUTER_PORT_OWNERS),
                  key=_port_order)


def _subnets(snap: Snapshot, port: PortSpec) -> list[tuple[Interface, SubnetSpec]]:
    out = []
    for f in port.fixed_ips:
        s = snap.subnets.get(f.subnet_id)
        if s is not None:
            out.append((ipaddress.ip_interface(f"{f.ip_address}/{s.cidr.prefixlen}"), s))
    return sorted(out, key=lambda x: (x[0].version, int(x[0].ip)))


def compile_router(snap: Snapshot, router: RouterSpec, index: RouterPorts | None = None) -> CompiledRouter:
    """``index``: router_ports_index(snap), when compiling many routers of one snapshot."""
    ns = namespace(router.id)
    links, routes, problems = [], [], []
    internal: list[Network] = []          # the internal subnets (SNAT sources)
    connected: list[tuple[Network, str]] = []  # (subnet, device) of every router port
    gw_dev: str | None = None
    gw_addr: ipaddress.IPv4Address | None = None
    gw_subnets: list[SubnetSpec] = []     # the gateway port's subnets: the first of each IP version routes
    advertised: list[tuple[str, SubnetSpec, PortSpec]] = []  # (qr- device, IPv6 subnet with an RA mode, port)
    for p in router_ports(snap, router, index):
        net = snap.networks.get(p.network_id)
        if net is None:
            problems.append(f"router {router.id}: port {p.id} on unknown network {p.network_id}")
            continue
        dev = device(p)
        subs = _subnets(snap, p)
        addresses: list[Interface] = [i for i, _ in subs]
        connected += [(i.network, dev) for i, _ in subs]
        if p.device_owner == DeviceOwner.ROUTER_GATEWAY:
            if gw_dev is not None:
                problems.append(f"router {router.id}: more than one gateway port, {p.id} ignored")
                continue
            gw_dev = dev
            v4 = [i for i, _ in subs if i.version == 4]
            if v4:
                gw_addr = ipaddress.IPv4Address(v4[0].ip)
            gw_subnets = [s for _, s in subs]
            own = {i.ip for i in addresses}
            addresses += [ipaddress.ip_interface(f"{f.floating_ip}/{f.floating_ip.max_prefixlen}")
                          for f in sorted(router.floating_ips, key=lambda f: int(f.floating_ip))
                          if f.floating_ip not in own]
        else:
            internal += [i.network for i, _ in subs if i.version == 4]
            advertised += [(dev, sub, p) for i, sub in subs if i.version == 6 and sub.ipv6_ra_mode is not None]
        links.append(PortLinkSpec(p.id, tap_name(p.id), dev, ns, bridge_name(p.network_id), p.mac_address,
                                  net.mtu, tuple(addresses)))
    for default in (DEFAULT_V4, DEFAULT_V6):
        gw_subnet = next((s for s in gw_subnets if s.ip_version == default.version and s.gateway_ip), None)
        if gw_dev is None or gw_subnet is None or gw_subnet.gateway_ip is None:
            continue
        gw = gw_subnet.gateway_ip
        if gw not in gw_subnet.cidr:
            routes.append(RouteSpec(ns, ipaddress.ip_network(f"{gw}/{gw.max_prefixlen}"), None, gw_dev))
        routes.append(RouteSpec(ns, default, gw, gw_dev))
    for r in sorted(router.routes, key=lambda r: (r.destination.version, str(r.destination), str(r.nexthop))):
        out = next((dev for net, dev in connected if r.nexthop in net and net.version == r.nexthop.version), None)
        if out is None:
            problems.append(f"router {router.id}: extra route {r.destination} via {r.nexthop}: the nexthop "
                            "is on none of its subnets")
            continue
        routes.append(RouteSpec(ns, r.destination, r.nexthop, out))
    sysctls = [SysctlSpec(ns, "net.ipv4.ip_forward", "1"), SysctlSpec(ns, "net.ipv6.conf.all.forwarding", "1"),
               SysctlSpec(ns, "net.ipv4.conf.all.rp_filter", "2")]
    if gw_dev is not None:
        sysctls.append(SysctlSpec(ns, f"net.ipv4.conf.{gw_dev}.arp_notify", "1"))
    table = NftTable(ns, "ip", nat_body(router, gw_dev, gw_addr, internal),
                     tuple(link.port_id for link in links))
    daemons = (ra_daemon(router, advertised),) if advertised else ()
    return CompiledRouter(ns, tuple(links), tuple(routes), table, tuple(sysctls), daemons, tuple(problems))


RA_MODES = {"slaac": "ra-only", "dhcpv6-stateless": "ra-stateless", "dhcpv6-stateful": "ra-only"}


def ra_daemon(router: RouterSpec, advertised: list[tuple[str, SubnetSpec, PortSpec]]) -> DaemonSpec:
    """Router advertisements on the router's IPv6 interfaces (dnsmasq in RA mode, no DHCP, no DNS): the
    router (its link-local address on each ``qr-``) as the default router, and each subnet's prefix with
    its mode's flags (slaac: autonomous; dhcpv6-stateless: autonomous + other config). Stateful subnets'
    addresses come from the network's DHCP server (whose RA carries the managed flag)."""
    devices = sorted({dev for dev, _, _ in advertised})
    ranges = sorted(f"--dhcp-range={s.cidr.network_address},{RA_MODES.get(str(s.ipv6_ra_mode), 'ra-only')},"
                    f"{s.cidr.prefixlen}" for _, s, _ in advertised)
    argv = ("dnsmasq", "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--port=0", "--bind-dynamic",
            "--except-interface=lo", *(f"--interface={d}" for d in devices), "--enable-ra",
            f"--pid-file={DIR}/pid", f"--log-facility={DIR}/dnsmasq.log", *ranges)
    return DaemonSpec(kind="ra", key=router.id, namespace=namespace(router.id), argv=argv, files=(),
                      binds=tuple(devices), ports=tuple(sorted({p.id for _, _, p in advertised})),
                      label=f"router advertisements for router {router.id}")


def nat_body(router: RouterSpec, gw_dev: str | None, gw_addr: ipaddress.IPv4Address | None,
             internal: list[Network]) -> str:
    """The router's NAT table (nft syntax). Floating IPs first: their SNAT wins over the generic one.

    Hairpin: an instance reaching another one behind the same router by its floating IP is DNATed back
    inside; the answer would then go straight back from the fixed address, which the sender never asked,
    so such connections (DNATed, in and out on internal ports) are also masqueraded to the router's
    address on the way out: the answer comes back through the router and is un-NATed.
    """
    fips = sorted((f for f in router.floating_ips if f.floating_ip.version == 4 and f.fixed_ip.version == 4),
                  key=lambda f: int(f.floating_ip)) if gw_dev else []
    pre = [f"ip daddr {f.floating_ip} dnat to {f.fixed_ip}" for f in fips]
    post = [f'oifname "{gw_dev}" ip saddr {f.fixed_ip} snat to {f.floating_ip}' for f in fips]
    if fips:
        post.append(f'ct status dnat iifname != "{gw_dev}" oifname != "{gw_dev}" masquerade')
    if router.enable_snat and gw_dev and gw_addr is not None and internal:
        sources = ", ".join(str(n) for n in sorted(set(internal), key=lambda n: (int(n.network_address),
                                                                                 n.prefixlen)))
        post.append(f'oifname "{gw_dev}" ip saddr {{ {sources} }} snat to {gw_addr}')
    lines = ["chain prerouting {", "\ttype nat hook prerouting priority dstnat; policy accept;",
             *(f"\t{rule}" for rule in pre), "}",
             # Locally generated traffic to a floating IP (e.g. from the router itself) maps the same way.
             "chain output {", "\ttype nat hook output priority -100; policy accept;",
             *(f"\t{rule}" for rule in pre), "}",
             "chain postrouting {", "\ttype nat hook postrouting priority srcnat; policy accept;",
             *(f"\t{rule}" for rule in post), "}"]
    return "\n".join(lines) + "\n"
