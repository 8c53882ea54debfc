"""DHCP servers (pure): which dnsmasq a host runs, and the exact files it reads.

One dnsmasq per network scheduled here, in ``qdhcp-<network>`` on ``ns-<11 of the DHCP port>``. Each
DHCP subnet is one ``static`` range on the command line whose ``set:`` tag selects that subnet's options
(router, DNS, routes, MTU); hosts (MAC -> address, name) and options are files re-read on SIGHUP.

Why not one process forever: dnsmasq 2.90 (Debian 12) corrupts its heap on the SIGHUP after it answered
a host whose hosts-file line carries a ``set:`` tag (docs/agent.md), so no tag ever lives in the hosts
file: subnet tags come from the ranges, and a port with extra_dhcp_opts is tagged by ``--dhcp-mac`` on
the command line (static configuration is never freed). Ranges and ``--dhcp-mac`` are read only at start.
Hence: ports added, changed or removed, and changes of any option -> SIGHUP; a subnet added or removed,
or a port gaining or losing extra_dhcp_opts -> restart (leases persist in the lease file). A change of
``DnsmasqFiles.argv_tail`` is what needs a restart. ``dnsmasq_daemon`` renders the whole daemon (command
line and files) for the generic supervisor: argv changes restart it, file changes SIGHUP it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from neutrino.compile.daemons import DIR, DaemonSpec
from neutrino.intent.model import DeviceOwner, NetworkId, PortId, PortSpec, Snapshot, SubnetSpec

LEASE_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class DhcpHost:
    mac: str
    ip: str
    hostname: str
    port_tag: str | None  # set when the port has extra_dhcp_opts


@dataclass(frozen=True, slots=True)
class DhcpServerSpec:
    network_id: NetworkId
    namespace: str
    interface: str
    port_id: PortId
    port_mac: str
    mtu: int
    ranges: tuple[str, ...]              # dnsmasq --dhcp-range values, one per DHCP subnet
    hosts: tuple[DhcpHost, ...]
    options: tuple[str, ...]             # lines of the options file


@dataclass(frozen=True, slots=True)
class DnsmasqFiles:
    argv_tail: tuple[str, ...]  # what follows the fixed arguments: ranges, --dhcp-mac (a change means restart)
    hosts: str
    opts: str


def subnet_tag(subnet_id: str) -> str:
    return f"s{subnet_id.replace('-', '')[:16]}"


def port_tag(port_id: str) -> str:
    return f"p{port_id.replace('-', '')[:16]}"


def hostname(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, dns_name: str) -> str:
    return dns_name or "host-" + str(ip).replace(".", "-").replace(":", "-")


def _subnet_options(s: SubnetSpec, mtu: int) -> list[str]:
    tag = f"tag:{subnet_tag(s.id)}"
    if s.cidr.version == 6:
        dns6 = ",".join(f"[{d}]" for d in s.dns_nameservers)
        return [f"{tag},option6:dns-server,{dns6}"] if dns6 else []
    lines = [f"{tag},option:netmask,{s.cidr.netmask}", f"{tag},28,{s.cidr.broadcast_address}",
             f"{tag},option:mtu,{mtu}"]
    dns = [str(d) for d in s.dns_nameservers]  # dnsmasq serves DHCP only (DNS off), so never itself
    if dns:
        lines.append(f"{tag},option:dns-server,{','.join(dns)}")
    if s.gateway_ip is not None:
        lines.append(f"{tag},option:router,{s.gateway_ip}")
    else:
        lines.append(f"{tag},option:router")  # explicitly none
    routes = [f"{r.destination},{r.nexthop}" for r in s.host_routes]
    if s.gateway_ip is not None and s.gateway_ip not in s.cidr:  # reach a gateway outside the subnet on-link
        routes.insert(0, f"{s.gateway_ip}/32,0.0.0.0")
    if routes:
        if s.gateway_ip is not None:  # RFC 3442: with classless routes the client ignores option 3
            routes.append(f"0.0.0.0/0,{s.gateway_ip}")
        lines.append(f"{tag},option:classless-static-route,{','.join(routes)}")
        lines.append(f"{tag},249,{','.join(routes)}")
    return lines


def _range(s: SubnetSpec) -> str:
    base = f"set:{subnet_tag(s.id)},{s.cidr.network_address}"
    if s.cidr.version == 4:
        return f"{base},static,{s.cidr.netmask},{LEASE_SECONDS}s"
    mode = s.ipv6_address_mode or s.ipv6_ra_mode
    if mode is None or mode == "dhcpv6-stateful":
        return f"{base},static,{s.cidr.prefixlen},{LEASE_SECONDS}s"
    if mode == "dhcpv6-stateless":
        return f"{base},ra-stateless,{s.cidr.prefixlen},{LEASE_SECONDS}s"
    return f"{base},ra-only,{s.cidr.prefixlen},{LEASE_SECONDS}s"


def _inert(*texts: str) -> bool:
    """Whether tenant text can go into an options-file line as it is. The API refuses control
    characters; this is the second line of defence: a newline would start an option line of the
    tenant's choosing, outside its port's tag (e.g. a default route for every instance on the network),
    so such an option is left out whatever the database holds."""
    return all(t.isprintable() for t in texts)


def compile_dhcp(snap: Snapshot, host: str) -> tuple[DhcpServerSpec, ...]:
    out = []
    ports_of: dict[str, list[PortSpec]] = {n: [] for n in snap.dhcp_networks}  # each network's, by id
    for p in sorted(snap.ports.values(), key=lambda p: p.id):
        if p.network_id in ports_of:
            ports_of[p.network_id].append(p)
    subnets_of: dict[str, list[SubnetSpec]] = {n: [] for n in snap.dhcp_networks}
    for s in sorted(snap.subnets.values(), key=lambda s: s.id):
        if s.network_id in subnets_of:
            subnets_of[s.network_id].append(s)
    for net_id in sorted(snap.dhcp_networks):
        net = snap.networks.get(net_id)
        ports = ports_of[net_id]
        dhcp_port = next((p for p in ports if p.device_owner == DeviceOwner.DHCP and p.host == host), None)
        if net is None or dhcp_port is None:
            continue
        subs = [s for s in subnets_of[net_id]
                if s.enable_dhcp and (s.cidr.version == 4 or net.mtu >= 1280)]  # no IPv6 below 1280 (RFC 8200)
        if not subs:
            continue
        by_id = {s.id: s for s in subs}
        hosts, options = [], []
        for s in subs:
            options += _subnet_options(s, net.mtu)
        for p in ports:
            if p.id == dhcp_port.id or not p.admin_state_up:
                continue
            ptag = port_tag(p.id) if p.extra_dhcp_opts else None
            for f in p.fixed_ips:
                sub = by_id.get(f.subnet_id)
                if sub is None or (sub.cidr.version == 6 and (sub.ipv6_address_mode or "dhcpv6-stateful")
                                 != "dhcpv6-stateful"):
                    continue
                hosts.append(DhcpHost(p.mac_address, str(f.ip_address), hostname(f.ip_address, p.dns_name), ptag))
            for opt in p.extra_dhcp_opts:
                if not _inert(opt.opt_name, opt.opt_value):
                    continue
                prefix = "option6:" if opt.ip_version == 6 else ("" if opt.opt_name.isdigit() else "option:")
                options.append(f"tag:{port_tag(p.id)},{prefix}{opt.opt_name},{opt.opt_value}")
        out.append(DhcpServerSpec(
            network_id=net_id, namespace=f"qdhcp-{net_id}", interface=f"ns-{dhcp_port.id[:11]}",
            port_id=dhcp_port.id, port_mac=dhcp_port.mac_address, mtu=net.mtu,
            ranges=tuple(_range(s) for s in subs),
            hosts=tuple(sorted(hosts, key=lambda h: (h.mac, h.ip))), options=tuple(sorted(set(options)))))
    return tuple(out)


def render_dnsmasq(spec: DhcpServerSpec) -> DnsmasqFiles:
    tail = [f"--dhcp-range={r}" for r in spec.ranges]
    if any(":" in r.split(",")[1] for r in spec.ranges):
        # Prefixes and flags only: router lifetime 0, the default router is the subnet's gateway, not us.
        tail += ["--enable-ra", f"--ra-param={spec.interface},10,0"]
    tail += sorted({f"--dhcp-mac=set:{h.port_tag},{h.mac}" for h in spec.hosts if h.port_tag})
    lines = []
    for h in spec.hosts:
        ip = f"[{h.ip}]" if ":" in h.ip else h.ip
        lines.append(f"{h.mac},{ip},{h.hostname},{LEASE_SECONDS}s")
    return DnsmasqFiles(argv_tail=tuple(tail), hosts="".join(f"{line}\n" for line in lines),
                        opts="".join(f"{line}\n" for line in spec.options))


def dnsmasq_daemon(spec: DhcpServerSpec) -> DaemonSpec:
    """The dnsmasq serving ``spec``, fully rendered (``{dir}``: its directory, see compile.daemons)."""
    files = render_dnsmasq(spec)
    argv = ("dnsmasq", "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--port=0",
            f"--interface={spec.interface}", "--bind-dynamic", "--except-interface=lo", "--dhcp-authoritative",
            "--no-ping", f"--dhcp-hostsfile={DIR}/hosts", f"--dhcp-optsfile={DIR}/opts",
            f"--dhcp-leasefile={DIR}/leases", f"--pid-file={DIR}/pid", f"--log-facility={DIR}/dnsmasq.log",
            "--dhcp-lease-max=16777216", *files.argv_tail)
    return DaemonSpec(kind="dnsmasq", key=spec.network_id, namespace=spec.namespace, argv=argv,
                      files=(("hosts", files.hosts), ("opts", files.opts)), keep=("leases",),
                      binds=(spec.interface,), ports=(spec.port_id,),
                      label=f"dnsmasq for network {spec.network_id}")
