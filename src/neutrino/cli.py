"""The ``neutrino`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neutrino import __version__, config, logs
from neutrino.errors import ConfigError, KernelError, NeutrinoError

if TYPE_CHECKING:
    from neutrino.identity.credentials import AdminPassword

EPILOG = """\
examples:
  neutrino up                         # API on 127.0.0.1:9696, SQLite under ./state, clouds.yaml written
  openstack --os-cloud neutrino network create demo
  neutrino up --state-dir /var/lib/neutrino --port 9797
  NEUTRINO_DATABASE__URL=postgresql://neutrino@db/neutrino neutrino server
  neutrino status

configuration: one YAML file (--config, $NEUTRINO_CONFIG, or <state-dir>/neutrino.yaml); any key can be
overridden from the environment as NEUTRINO_<SECTION>__<KEY>, e.g. NEUTRINO_API__PORT=9797.
"""


GLOBAL_OPTIONS = ("config", "state_dir", "log_level", "log_format", "debug")


def _global_options(*, top: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name: ``neutrino --state-dir X
    status`` and ``neutrino status --state-dir X`` are the same. Each level leaves an option it was not
    given unset (SUPPRESS), so a value given at one level is never reset by the default of another."""
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("global options (before or after the command)" if top else "global options")
    g.add_argument("--config", metavar="FILE",
                   help="YAML configuration file (default: $NEUTRINO_CONFIG, else <state-dir>/neutrino.yaml)")
    g.add_argument("--state-dir", metavar="DIR",
                   help="where the database, logs and runtime files live (default ./state)")
    g.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                   help="log verbosity of up/server/agent/cleanup (default INFO)")
    g.add_argument("--log-format", choices=["text", "json"], help="log line format (default text)")
    g.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    return p


def _format_option(p: argparse.ArgumentParser, *choices: str) -> None:
    p.add_argument("--format", choices=choices, default=choices[0],
                   help=f"output format: {' or '.join(choices)} (default {choices[0]})")


def _lab_parser(lab: argparse.ArgumentParser, common: list[argparse.ArgumentParser]) -> None:
    lsub = lab.add_subparsers(dest="action", metavar="ACTION", required=True)
    lu = lsub.add_parser("up", parents=common, help="start the lab (or what is missing of it); idempotent",
                         description="Start the server and hosts host1..hostN with an agent each; returns once "
                                     "every agent is alive. Run again: makes only what is missing; a larger N "
                                     "grows the lab, stopped hosts start again.")
    lu.add_argument("--hosts", type=int, metavar="N", help="number of hosts (default: as many as the lab has, "
                                                           "else 2)")
    lu.add_argument("--port", type=int, help="the server's port on 127.0.0.1 (default 9696; api.port)")
    lu.add_argument("--clouds-yaml", metavar="PATH",
                    help="where to write the 'neutrino' cloud (admin) (default ~/.config/openstack/clouds.yaml; "
                         "'' to skip)")
    lsub.add_parser("down", parents=common, help="remove everything the lab made",
                    description="Kill everything in the lab's namespaces, remove them, stop its server, and remove "
                                "its database and hosts' state (logs stay).")
    lh = lsub.add_parser("host", parents=common, help="stop (a power cut) or start a lab host")
    hsub = lh.add_subparsers(dest="host_action", metavar="ACTION", required=True)
    hsub.add_parser("stop", parents=common, help="power cut: the host's agent and everything in it stop",
                    description="Every process in the host is killed and its namespace removed: it forwards and "
                                "answers nothing until `lab host start`.").add_argument("name")
    hsub.add_parser("start", parents=common, help="make the host again and start its agent",
                    description="The host comes back with the same name, address and state; returns once its "
                                "agents are alive.").add_argument("name")
    le = lsub.add_parser("exec", parents=common, help="run a command inside a host: lab exec host1 -- ip -4 addr",
                         description="Run COMMAND inside a lab host (or the 'upstream' namespace); exits with its "
                                     "exit status.")
    le.add_argument("name", help="host1..hostN, or upstream")
    le.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")


def parser() -> argparse.ArgumentParser:
    common = [_global_options(top=False)]
    top = argparse.ArgumentParser(
        prog="neutrino", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        parents=[_global_options(top=True)],
        description="Networking as a service for Linux hosts, speaking the OpenStack Networking (Neutron) "
                    "v2.0 API.")
    top.add_argument("--version", action="version", version=f"neutrino {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=common, **kw)

    up = command("up", help="run the all-in-one service (API server and host agent) on this machine",
                 description="Run the API server and this host's agent in one process. The database is "
                             "created and migrated on start; a clouds.yaml entry named 'neutrino' is written "
                             "so `openstack --os-cloud neutrino ...` works at once.")
    up.add_argument("--host", help="address to listen on (default 127.0.0.1; api.host)")
    up.add_argument("--port", type=int, help="port to listen on (default 9696; api.port)")
    up.add_argument("--clouds-yaml", default=str(Path.home() / ".config/openstack/clouds.yaml"), metavar="PATH",
                    help="where to write the 'neutrino' cloud entry (default %(default)s); '' to skip")

    server = command("server", help="run only the API server (for multi-host deployments)",
                     description="Run the API server alone; run `neutrino agent` on each host. The database "
                                 "is created and migrated on start.")
    server.add_argument("--host", help="address to listen on (default 127.0.0.1; api.host)")
    server.add_argument("--port", type=int, help="port to listen on (default 9696; api.port)")

    command("agent", help="run only this host's agent, against a remote server",
            description="Run the host agent: it registers with the server at agent.server_url "
                        "(NEUTRINO_AGENT__SERVER_URL), watches its change feed and makes this host's bridges, "
                        "VXLAN, namespaces and dnsmasq match the intent.")

    status = command("status", help="say what is running and what is broken (exit 1 when anything is)",
                     description="Report this state dir's process, the server's agents and resource counts "
                                 "(asked as the identity admin) and the dnsmasq processes of this host; exit "
                                 "status 1 when anything is wrong.")
    _format_option(status, "table", "json")
    status.add_argument("--json", action="store_const", dest="format", const="json", help="same as --format json")

    inst = command("instance", help="lab instances: namespaces with a real DHCP client, wired like VMs",
                   description="Lab instances stand in for VMs on this host: a network namespace lab-NAME whose "
                               "eth0 has a port on a network (device_owner compute:lab), wired by this host's "
                               "agent and configured by real DHCP. Needs root and a running server.")
    isub = inst.add_subparsers(dest="action", metavar="ACTION", required=True)
    ic = isub.add_parser("create", parents=common, help="create an instance on a network and wait for its address")
    ic.add_argument("name", help="1-11 lower-case letters, digits, '-' (namespace lab-NAME)")
    where = ic.add_mutually_exclusive_group(required=True)
    where.add_argument("--network", help="network name or id: the instance gets a new port there")
    where.add_argument("--port", dest="port_ref", metavar="PORT",
                       help="use this existing, unattached port (name or id) as it is: its addresses, groups and "
                            "port security; deleting the instance gives it back unbound")
    ic.add_argument("--fixed-ip", action="append", metavar="IP", help="ask for this address (repeatable)")
    security = ic.add_mutually_exclusive_group()
    security.add_argument("--security-group", action="append", metavar="SG",
                          help="put the port in this security group, name or id (repeatable; default: the "
                               "project's default group, as a VM booted by Nova)")
    security.add_argument("--no-port-security", action="store_true",
                          help="a port without port security: no groups, no anti-spoofing")
    ic.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                    help="seconds to wait for the DHCP address (0: no wait; default %(default)s)")
    ic.add_argument("--host", dest="lab_host", metavar="NAME",
                    help="in a multi-host lab (`neutrino lab up`): the lab host to place it on (host1, ...)")
    il = isub.add_parser("list", parents=common, help="list this host's instances and their live addresses")
    _format_option(il, "table", "json")
    ie = isub.add_parser("exec", parents=common,
                         help="run a command inside an instance: instance exec NAME -- ping -c1 10.0.0.3",
                         description="Run COMMAND in the instance's namespace; exits with its exit status.")
    ie.add_argument("name")
    ie.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    # Not listed: `lab host start` brings a host's instances back with it.
    isub.add_parser("boot", parents=common).add_argument("names", nargs="*", metavar="NAME")
    idel = isub.add_parser("delete", parents=common, help="delete an instance and its port")
    idel.add_argument("name")
    isub.add_parser("sweep", parents=common, help="remove lab taps and namespaces of this neutrino no instance owns",
                    description="Lab taps and lab-* namespaces carry this neutrino's mark (owner id in the state "
                                "dir, creator 'lab'); those no instance record names are removed. Another "
                                "neutrino's, and anything unmarked, are left alone. Needs root; no server.")

    _lab_parser(command("lab", help="a multi-host lab on this machine: a server and hosts made of namespaces",
                        description="A server on 127.0.0.1:PORT and hosts host1..hostN, each a network + mount "
                                    "namespace with its own `neutrino agent`, VXLAN between them over an underlay, "
                                    "and a shared flat segment (physnet 'public' on every host's eth1) with an "
                                    "'upstream' namespace at 172.24.4.1/24. Its processes outlive the command; "
                                    "the state dir describes it. Needs root."), common)

    command("cleanup",
            help="remove what this host's agent made (bridges, VXLAN, qdhcp namespaces, dnsmasq, instances)",
            description="Stopping neutrino leaves this host's data path running on purpose (a restart must not "
                        "cut traffic). Once it is stopped for good, this removes every bridge (brq*), VXLAN "
                        "device (vxlan-*), qdhcp-* namespace, dnsmasq and lab instance it made. The intent in the "
                        "database is untouched: the next start builds it all again.")

    db = command("db", help="database maintenance: `neutrino db upgrade`",
                 description="The database is database.url, or SQLite in the state dir when that is empty.")
    dsub = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    dsub.add_parser("upgrade", parents=common, help="create or migrate the database to the current schema",
                    description="Run the Alembic migrations up to the current schema (up and server also do "
                                "this on start); safe to run again.")
    sub.add_parser("db-upgrade", parents=common)  # the former name; not listed

    clouds = command("clouds-yaml", help="print (or write) the clouds.yaml entry for this server",
                     description="The 'neutrino' cloud for the openstack CLI and SDK, with the identity admin's "
                                 "credentials (identity.admin_password, or the one generated in the state dir).")
    clouds.add_argument("--write", metavar="PATH", help="merge the entry into this clouds.yaml (mode 0600)")
    _format_option(clouds, "yaml", "json")
    return top


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed arguments; a global option given nowhere is None (False for --debug)."""
    p = parser()
    args = p.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(args, "port_ref", None) and (args.fixed_ip or args.security_group or args.no_port_security):
        p.error("instance create --port takes the port as it is: no --fixed-ip, --security-group or "
                "--no-port-security with it")
    for name in GLOBAL_OPTIONS:
        if not hasattr(args, name):
            setattr(args, name, False if name == "debug" else None)
    return args


def _load(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config, state_dir=args.state_dir)
    if getattr(args, "host", None):
        cfg.api.host = args.host
    if getattr(args, "port", None):
        cfg.api.port = args.port
    if args.log_level:
        cfg.log.level = args.log_level
    if args.log_format:
        cfg.log.format = args.log_format
    return cfg


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def cmd_up(args: argparse.Namespace, cfg: config.Config, *, with_agent: bool) -> int:
    from neutrino import server
    from neutrino.agent import runtime

    logs.setup(cfg.log.level, cfg.log.format)
    admin = _admin_password(cfg)
    app, db, _identity = server.build(cfg)
    if with_agent and args.clouds_yaml:
        path = server.write_clouds_yaml(cfg, Path(args.clouds_yaml))
        print(f"clouds.yaml: cloud 'neutrino' written to {path} (mode 0600)", file=sys.stderr)
    if admin is not None and admin.generated:
        i = cfg.identity
        print(f"neutrino: first start: generated the password of the identity admin '{i.admin_user}' (project "
              f"'{i.admin_project}'): {admin.value}\n  it is kept in {admin.source} (mode 0600) for later starts "
              "and `neutrino status|instance|clouds-yaml`; set identity.admin_password to choose your own",
              file=sys.stderr)
    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        tasks = [asyncio.create_task(server.serve(cfg, app, stop))]
        if with_agent:
            agent = runtime.build(cfg, app.state.api.channel)
            tasks.append(asyncio.create_task(runtime.run(agent, stop)))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    try:
        with _pid_file(cfg, "neutrino.pid", cfg.public_url):
            asyncio.run(main())
    finally:
        db.dispose()
    return 0


def _admin_password(cfg: config.Config) -> AdminPassword | None:
    """Builtin identity: the admin password in effect (generated on the first start); a weak one is refused
    unless the API listens on loopback only."""
    if cfg.identity.mode != "builtin":
        return None
    from neutrino.identity import credentials

    admin = credentials.ensure(cfg)
    credentials.refuse_weak_beyond_loopback(cfg, admin)
    return admin


def cmd_agent(cfg: config.Config) -> int:
    from neutrino.agent import runtime

    logs.setup(cfg.log.level, cfg.log.format)
    agent = runtime.build(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await runtime.run(agent, stop)

    with _pid_file(cfg, "agent.pid"):
        asyncio.run(main())
    return 0


@contextlib.contextmanager
def _pid_file(cfg: config.Config, name: str, *extra: str) -> Iterator[None]:
    """``<state>/<name>``: this process's pid (then ``extra`` lines) while it runs; ``status`` and
    ``cleanup`` read it."""
    path = Path(cfg.state_dir) / name
    path.write_text("".join(f"{line}\n" for line in (str(os.getpid()), *extra)))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _running(cfg: config.Config) -> int | None:
    """The pid of a live `neutrino up`/`server`/`agent` using this state directory, if any."""
    for name in ("neutrino.pid", "agent.pid"):
        try:
            pid = int((Path(cfg.state_dir) / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if Path(f"/proc/{pid}").exists():
            return pid
    return None


def cmd_cleanup(cfg: config.Config) -> int:
    from neutrino.agent import runtime
    from neutrino.agent.pipeline import cleanup
    from neutrino.lab.instances import Instances

    pid = _running(cfg)
    if pid is not None:
        print(f"neutrino: cleanup refused: neutrino is running here (pid {pid}) and would build it all again; "
              "stop it first", file=sys.stderr)
        return 1
    logs.setup(cfg.log.level, cfg.log.format)
    s = runtime.settings(cfg)
    lab = Instances(s.state_dir)
    instances = lab.all()
    for spec in instances:
        lab.delete(spec.name)
        print(f"  instance {spec.name}: namespace lab-{spec.name} and its DHCP client removed")
    for orphan in lab.sweep():  # lab taps and namespaces of ours that no instance record names
        print(f"  orphaned lab device {orphan} removed")
    try:
        report = cleanup(s)  # the agent's pipeline run on the empty HostState
    except (KernelError, OSError) as exc:
        print(f"neutrino: cleanup incomplete: {exc}", file=sys.stderr)
        return 1
    if report.errors:
        print(f"neutrino: cleanup incomplete: {'; '.join(report.errors)}", file=sys.stderr)
        return 1
    print(f"  {report.daemons} daemons stopped; {report.changes} changes in all")
    print(f"cleanup done: {len(instances)} instances removed; nothing this neutrino made (owner {s.owner}) is "
          "left on this host, and nothing of anyone else was touched")
    return 0


def _probe(cfg: config.Config) -> dict[str, object]:
    """Ask the running server what it knows: its API versions, the servers sharing its database, the agents
    (alive or not, what each hosts, how far behind), what has not converged, resource counts. With several
    ``agent.server_url``s, the first that answers."""
    from neutrino.client import for_config

    async def run(url: str | None) -> dict[str, object]:
        async with for_config(cfg, url) as api:
            versions = (await api.call("GET", "/", anonymous=True))["versions"]
            cluster = await api.call("GET", "/agent-api/v1/status")
            counts = {c: len((await api.call("GET", f"/v2.0/{c}", params={"fields": "id"}))[c])
                      for c in ("networks", "subnets", "ports")}
        return {"api": {"reachable": True, "url": api.url, "versions": [v["id"] for v in versions]},
                "counts": counts, **cluster}

    urls: list[str | None] = list(cfg.agent.server_urls()) or [None]
    for url in urls[:-1]:
        with contextlib.suppress(NeutrinoError):
            return asyncio.run(run(url))
    return asyncio.run(run(urls[-1]))


def _cluster_problems(report: dict[str, Any]) -> list[str]:
    """What ``/agent-api/v1/status`` says is wrong or not done yet, one line each."""
    out = [f"server {s['url']} ({s['hostname']}, pid {s['pid']}) stopped reporting at {s['heartbeat']}"
           for s in report.get("servers", []) if not s["alive"]]
    out += [f"{a['type']} on {a['host']} is not reporting (dead?)" for a in report["agents"] if not a["alive"]]
    out += [f"{a['type']} on {a['host']} has not applied {a['behind']} change(s) that concern it"
            for a in report["agents"] if a.get("behind")]
    live = {a["type"] for a in report["agents"] if a["alive"]}
    todo = report.get("unconverged", {})
    for key, what, needs in (
            ("ports_not_active", "bound port(s) not ACTIVE yet", None),
            ("ports_on_hosts_without_agent", "port(s) bound to a host without a live agent", None),
            ("networks_without_dhcp", "network(s) with DHCP but no DHCP agent", "DHCP agent"),
            ("routers_without_l3_agent", "router(s) without an L3 agent", "L3 agent"),
            ("floating_ips_not_active", "associated floating IP(s) not ACTIVE yet", "L3 agent")):
        found = todo.get(key) or {"count": 0, "ids": []}
        if found["count"] and (needs is None or needs in live):
            more = ", ..." if found["count"] > len(found["ids"]) else ""
            out.append(f"{found['count']} {what}: {', '.join(found['ids'])}{more}")
    return out


def _dnsmasq(cfg: config.Config) -> list[dict[str, object]]:
    from neutrino.dataplane.dnsmasq import DnsmasqSupervisor

    sup = DnsmasqSupervisor(Path(cfg.state_dir).resolve() / "agent")
    return [{"network": n, "pid": st.pid, "running": st.pid is not None} for n, st in sorted(sup.observe().items())]


def cmd_status(args: argparse.Namespace, cfg: config.Config) -> int:
    """What runs, what the server knows, what is broken; exit 1 when anything is. A server that cannot be
    reached or refuses the credentials is one of the problems listed, not a failure of the command."""
    report: dict[str, Any] = {"state_dir": str(Path(cfg.state_dir).resolve()), "url": cfg.public_url,
                              "process": None, "api": {"reachable": False}, "agents": [], "counts": {}}
    problems: list[str] = []
    pid_file = Path(cfg.state_dir) / "neutrino.pid"
    with contextlib.suppress(OSError, ValueError):
        pid, _, url = pid_file.read_text().partition("\n")
        alive = Path(f"/proc/{int(pid)}").exists()
        report["process"] = {"pid": int(pid), "alive": alive}
        report["url"] = url.strip() or cfg.public_url
        if not alive:
            problems.append(f"process {pid.strip()} is gone (stale pid file)")
    try:
        report.update(_probe(cfg))
    except (NeutrinoError, KeyError, TypeError) as exc:
        report["api"] = {"reachable": False, "error": str(exc)}
        problems.append(f"API: {exc}")
    report["dnsmasq"] = _dnsmasq(cfg)
    problems += _cluster_problems(report)
    problems += [f"dnsmasq for network {d['network']} is not running" for d in report["dnsmasq"] if not d["running"]]
    report["problems"] = problems
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0 if not problems else 1
    print(f"neutrino at {report['url']} (state {report['state_dir']})")
    proc = report["process"]
    if proc:
        print(f"  process: pid {proc['pid']}, {'running' if proc['alive'] else 'DEAD'}")
    else:
        print("  process: no pid file here (started from another state dir, or not at all)")
    if report["counts"]:
        print("  intent:  " + ", ".join(f"{v} {k}" for k, v in report["counts"].items()))
    if "revision" in report:
        feed = report["feed"]
        print(f"  feed:    revision {report['revision']} (pruned through {report['pruned_through']}); "
              f"{feed['server']} {'LISTENs' if feed['listening'] else 'polls'}, {feed['waiters']} agents waiting")
    for s in report.get("servers", []):
        print(f"  server:  {s['url']:<28} on {s['hostname']} pid {s['pid']}, {'alive' if s['alive'] else 'DEAD'}, "
              f"last seen {s['heartbeat']}")
    for a in report["agents"]:
        hosts = ", ".join(f"{v} {k}" for k, v in a.get("hosts", {}).items())
        behind = "" if a.get("behind") is None else f", {a['behind']} behind"
        print(f"  agent:   {a['type']:<20} on {a['host']:<20} {'alive' if a['alive'] else 'DEAD'}, last seen "
              f"{a.get('heartbeat', '?')}, revision {a.get('revision') or '-'}{behind}; hosts {hosts or 'nothing'}")
    running = sum(1 for d in report["dnsmasq"] if d["running"])
    print(f"  dnsmasq: {running} running here for {len(report['dnsmasq'])} served networks")
    print("  status:  " + ("OK" if not problems else "PROBLEMS\n    - " + "\n    - ".join(problems)))
    return 0 if not problems else 1


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as an aligned text table with a header; lists are joined with ', ', empty cells are '-'."""
    def cell(v: Any) -> str:
        text = ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
        return text if text and v is not None else "-"

    cells = [[c.upper() for c in columns]] + [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def cmd_instance(args: argparse.Namespace, cfg: config.Config) -> int:
    from neutrino.lab import lifecycle, multihost

    if getattr(args, "lab_host", None) or multihost.is_lab(cfg):
        return lab_instance(args, cfg)
    inst = lifecycle.instances(cfg)
    if args.action == "create":
        choice = lifecycle.PortChoice(network=args.network, fixed_ips=tuple(args.fixed_ip or ()),
                                      security_groups=tuple(args.security_group or ()),
                                      port_security=not args.no_port_security, port=args.port_ref)
        spec = asyncio.run(lifecycle.create(cfg, args.name, choice, args.wait))
        got = inst.address(spec.name)
        print(f"instance {spec.name}: port {spec.port_id}, {', '.join(got) or 'no address yet'} "
              f"({'DHCP' if spec.dhcp else 'static'})")
    elif args.action == "list":
        rows = [{"name": s.name, "port_id": s.port_id, "network_id": s.network_id, "addresses": list(s.addresses),
                 "config": "dhcp" if s.dhcp else "static", "live_addresses": inst.address(s.name)}
                for s in inst.all()]
        print(json.dumps(rows, indent=2) if args.format == "json" else
              table(rows, ["name", "port_id", "addresses", "config", "live_addresses"]))
    elif args.action == "exec":
        if inst.load(args.name) is None:
            raise NeutrinoError(f"instance {args.name} not found (see `neutrino instance list`)")
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise NeutrinoError("no command given: neutrino instance exec NAME -- COMMAND [ARG...]")
        return inst.exec(args.name, argv).returncode
    elif args.action == "boot":
        for spec in asyncio.run(lifecycle.boot(cfg, args.names)):
            print(f"instance {spec.name}: back with port {spec.port_id}, {', '.join(inst.address(spec.name)) or '-'}")
    elif args.action == "delete":
        spec = asyncio.run(lifecycle.delete(cfg, args.name))
        print(f"instance {spec.name} deleted (port {spec.port_id})")
    elif args.action == "sweep":
        gone = inst.sweep()
        print(f"swept {len(gone)} orphaned lab objects of owner {inst.owner}" + "".join(f"\n  {g}" for g in gone))
    return 0


def _lab_config(args: argparse.Namespace, cfg: config.Config) -> config.Config:
    """Later lab commands read the configuration file `lab up` was given, unless given one themselves."""
    from neutrino.lab import multihost

    rec = multihost.load(multihost.lab_dir(cfg))
    if rec is not None and rec.config and not args.config:
        args.config = rec.config
        return _load(args)
    return cfg


def cmd_lab(args: argparse.Namespace, cfg: config.Config) -> int:
    from neutrino.lab import multihost

    def say(line: str) -> None:
        print(line, flush=True)

    if args.action == "up":  # run again (growing the lab, restarting what died): with the lab's configuration
        cfg = _lab_config(args, cfg)
        multihost.up(cfg, args.hosts, args.port, args.clouds_yaml, args.config, say)
        return 0
    cfg = _lab_config(args, cfg)
    if args.action == "down":
        multihost.down(cfg, say)
    elif args.action == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return multihost.run(cfg, args.name, argv)
    elif args.host_action == "stop":
        multihost.host_stop(cfg, args.name)
        say(f"host {args.name} stopped (power cut)")
    else:
        was_stopped = multihost.host_start(cfg, args.name)
        say(f"host {args.name} {'started' if was_stopped else 'was running'}; its agents are alive")
    return 0


def lab_instance(args: argparse.Namespace, cfg: config.Config) -> int:
    """``instance …`` in a multi-host lab's state dir: done inside the lab host that has (or gets) the
    instance, by the same command run there as that host's own tool."""
    from neutrino.lab import multihost

    cfg = _lab_config(args, cfg)
    rec = multihost.require(cfg)
    if args.action == "create":
        if not args.lab_host:
            raise NeutrinoError(f"this state dir is a multi-host lab: say where with --host "
                                f"({', '.join(rec.hosts)})")
        other = multihost.instance_host(cfg, rec, args.name)
        if other is not None:
            raise NeutrinoError(f"instance {args.name} exists (on {other})")
        forwarded = multihost.strip_options(args.raw_argv, ("--host", "--state-dir", "--config"))
        return multihost.in_host(cfg, rec, args.lab_host, forwarded).returncode
    if args.action == "boot":
        raise NeutrinoError("instance boot runs inside a lab host (`neutrino lab host start` does it)")
    if args.action in ("list", "sweep"):
        rows: list[dict[str, Any]] = []
        for host in rec.hosts:
            try:
                multihost.running_host(cfg, rec, host)
            except NeutrinoError:
                rows += [{"host": f"{host} (stopped)", "name": r.get("name"), "port_id": r.get("port_id"),
                          "network_id": r.get("network_id"), "addresses": r.get("addresses"),
                          "config": "dhcp" if r.get("dhcp") else "static", "live_addresses": []}
                         for r in multihost.instance_records(cfg, rec, host)]
                continue
            if args.action == "sweep":
                multihost.in_host(cfg, rec, host, ["instance", "sweep"])
                continue
            done = multihost.in_host(cfg, rec, host, ["instance", "list", "--format", "json"], capture_output=True)
            if done.returncode != 0:
                raise NeutrinoError(f"instance list on {host}: {done.stderr.strip()}")
            rows += [{"host": host, **r} for r in json.loads(done.stdout)]
        if args.action == "list":
            print(json.dumps(rows, indent=2) if args.format == "json" else
                  table(rows, ["host", "name", "port_id", "addresses", "config", "live_addresses"]))
        return 0
    found = multihost.instance_host(cfg, rec, args.name)
    if found is None:
        raise NeutrinoError(f"instance {args.name} not found on any lab host (see `neutrino instance list`)")
    host = found
    if args.action == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise NeutrinoError("no command given: neutrino instance exec NAME -- COMMAND [ARG...]")
        where = multihost.running_host(cfg, rec, host)
        return subprocess.run([*where.enter(), "ip", "netns", "exec", f"lab-{args.name}", *argv],
                              check=False).returncode
    try:  # delete
        multihost.running_host(cfg, rec, host)
    except NeutrinoError:  # its kernel side went with the host: the port and the record remain
        port_id = multihost.forget_instance(cfg, rec, host, args.name)
        print(f"instance {args.name} deleted (port {port_id}; its host {host} is stopped)")
        return 0
    return multihost.in_host(cfg, rec, host, ["instance", "delete", args.name]).returncode


def _display_url(url: str) -> str:
    """A database URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':')[0]}:***@{tail}" if ":" in creds else url


def cmd_db_upgrade(cfg: config.Config) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from neutrino.db.engine import Database
    from neutrino.db.migrate import upgrade

    where = _display_url(cfg.database_url)
    db = Database(cfg.database_url)
    try:
        upgrade(db)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise NeutrinoError(f"database at {where}: {first}") from exc
    finally:
        db.dispose()
    print(f"database at {where} is at the current schema")
    return 0


def cmd_clouds_yaml(args: argparse.Namespace, cfg: config.Config) -> int:
    from neutrino import server

    if args.write:
        print(server.write_clouds_yaml(cfg, Path(args.write)))
        return 0
    doc = {"clouds": {"neutrino": server.clouds_entry(cfg)}}
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        import yaml
        print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.command == "up":
        return cmd_up(args, cfg, with_agent=True)
    if args.command == "server":
        args.clouds_yaml = ""
        return cmd_up(args, cfg, with_agent=False)
    if args.command == "instance":
        return cmd_instance(args, cfg)
    if args.command == "lab":
        return cmd_lab(args, cfg)
    if args.command == "agent":
        return cmd_agent(cfg)
    if args.command == "status":
        return cmd_status(args, cfg)
    if args.command == "cleanup":
        return cmd_cleanup(cfg)
    if args.command in ("db", "db-upgrade"):
        return cmd_db_upgrade(cfg)
    if args.command == "clouds-yaml":
        return cmd_clouds_yaml(args, cfg)
    raise AssertionError(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every error ends as one line on stderr and a non-zero exit status (2: usage or
    configuration, 1: anything else); ``--debug`` adds the traceback."""
    with contextlib.suppress(OSError):  # no stderr file descriptor (e.g. captured): no stack dumps either
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
    args = parse(argv)
    if not args.command:
        parser().print_help()
        return 2
    name = " ".join(str(w) for w in (args.command, getattr(args, "action", None)) if w)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, ConfigError):
            print(f"neutrino: configuration error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"neutrino {name}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, NeutrinoError | ValueError | TimeoutError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    else:  # not expected: say what it was, --debug shows where
        text = f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)"
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
