"""The ``neutrino`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import signal
import sys
import urllib.error
import urllib.request
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument("--state-dir", help="where the database, logs and runtime files live (default ./state)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="neutrino", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Networking as a service for Linux hosts, speaking the OpenStack Networking (Neutron) "
                    "v2.0 API.")
    top.add_argument("--version", action="version", version=f"neutrino {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="run the all-in-one service (API server and host agent) on this machine",
                        description="Run the API server and this host's agent in one process. The database "
                                    "is created and migrated on start; a clouds.yaml entry named 'neutrino' "
                                    "is written so `openstack --os-cloud neutrino ...` works at once.")
    _common(up)
    up.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="port to listen on (default 9696)")
    up.add_argument("--clouds-yaml", default=str(Path.home() / ".config/openstack/clouds.yaml"),
                    help="where to write the 'neutrino' cloud entry (default %(default)s); '' to skip")

    server = sub.add_parser("server", help="run only the API server (for multi-host deployments)")
    _common(server)
    server.add_argument("--host", help="address to listen on")
    server.add_argument("--port", type=int, help="port to listen on")

    status = sub.add_parser("status", help="say what is running and what is broken")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    agent = sub.add_parser("agent", help="run only this host's agent, against a remote server",
                           description="Run the host agent: it registers with the server at agent.server_url "
                                       "(NEUTRINO_AGENT__SERVER_URL), watches its change feed and makes this "
                                       "host's bridges, VXLAN, namespaces and dnsmasq match the intent.")
    _common(agent)

    inst = sub.add_parser("instance", help="lab instances: namespaces with a real DHCP client, wired like VMs",
                          description="Lab instances stand in for VMs: a network namespace with a port on a "
                                      "network, wired by this host's agent, configured by real DHCP.")
    isub = inst.add_subparsers(dest="action", metavar="ACTION", required=True)
    ic = isub.add_parser("create", help="create an instance on a network and wait for its address")
    _common(ic)
    ic.add_argument("name", help="1-11 lower-case letters, digits, '-' (namespace lab-NAME)")
    ic.add_argument("--network", required=True, help="network name or id")
    ic.add_argument("--fixed-ip", action="append", metavar="IP", help="ask for this address (repeatable)")
    ic.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the DHCP address (0: no wait)")
    il = isub.add_parser("list", help="list this host's instances and their live addresses")
    _common(il)
    ie = isub.add_parser("exec", help="run a command inside an instance: instance exec NAME -- ping -c1 10.0.0.3")
    _common(ie)
    ie.add_argument("name")
    ie.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    idel = isub.add_parser("delete", help="delete an instance and its port")
    _common(idel)
    idel.add_argument("name")

    clean = sub.add_parser(
        "cleanup", help="remove what this host's agent made (bridges, VXLAN, qdhcp namespaces, dnsmasq, instances)",
        description="Stopping neutrino leaves this host's data path running on purpose (a restart must not cut "
                    "traffic). Once it is stopped for good, this removes every bridge (brq*), VXLAN device "
                    "(vxlan-*), qdhcp-* namespace, dnsmasq and lab instance it made. The intent in the database "
                    "is untouched: the next start builds it all again.")
    _common(clean)

    db = sub.add_parser("db-upgrade", help="create or migrate the database to the current schema")
    _common(db)

    clouds = sub.add_parser("clouds-yaml", help="print (or write) the clouds.yaml entry for this server")
    _common(clouds)
    clouds.add_argument("--write", metavar="PATH", help="merge the entry into this clouds.yaml")
    return top


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
    from neutrino.agent.drivers import HostDriver
    from neutrino.agent.instances import Instances
    from neutrino.intent.model import Snapshot

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
    driver = HostDriver(s)
    served = sorted(driver.dnsmasq.observe())
    try:
        result = driver.reconcile(Snapshot(revision=0))  # converge to "nothing here"
    except KernelError as exc:
        print(f"neutrino: cleanup incomplete: {exc}", file=sys.stderr)
        return 1
    print(f"  dnsmasq stopped for {len(served)} networks; {result.changes} changes in all")
    print(f"cleanup done: {len(instances)} instances removed; no brq*, vxlan-*, qdhcp-* or dnsmasq of "
          "neutrino left on this host")
    return 0


def _probe(cfg: config.Config) -> dict[str, object]:
    """Ask the running server what it knows: agents (alive or not) and resource counts."""
    from neutrino import lab

    async def run() -> dict[str, object]:
        api = lab.Api(cfg)
        agents = (await api.call("GET", "/v2.0/agents"))["agents"]
        counts = {c: len((await api.call("GET", f"/v2.0/{c}", params={"fields": "id"}))[c])
                  for c in ("networks", "subnets", "ports")}
        return {"agents": [{"host": a["host"], "type": a["agent_type"], "alive": a["alive"]} for a in agents],
                "counts": counts}

    return asyncio.run(run())


def _dnsmasq(cfg: config.Config) -> list[dict[str, object]]:
    from neutrino.dataplane.dnsmasq import DnsmasqSupervisor

    sup = DnsmasqSupervisor(Path(cfg.state_dir).resolve() / "agent")
    return [{"network": n, "pid": st.pid, "running": st.pid is not None} for n, st in sorted(sup.observe().items())]


def cmd_status(args: argparse.Namespace, cfg: config.Config) -> int:
    """What runs, what the server knows, what is broken; exit 1 when anything is."""
    report: dict[str, Any] = {"state_dir": str(Path(cfg.state_dir).resolve()), "url": cfg.public_url,
                              "process": None, "agents": [], "counts": {}}
    problems: list[str] = []
    pid_file = Path(cfg.state_dir) / "neutrino.pid"
    if pid_file.exists():
        pid, _, url = pid_file.read_text().partition("\n")
        alive = Path(f"/proc/{pid.strip()}").exists()
        report["process"] = {"pid": int(pid), "alive": alive}
        report["url"] = url.strip() or cfg.public_url
        if not alive:
            problems.append(f"process {pid.strip()} is gone (stale pid file)")
    try:
        with urllib.request.urlopen(f"{report['url']}/", timeout=3) as resp:
            report["api"] = {"reachable": True, "versions": [v["id"] for v in json.load(resp)["versions"]]}
        report.update(_probe(cfg))
    except (urllib.error.URLError, OSError, ValueError, KeyError, NeutrinoError) as exc:
        report.setdefault("api", {"reachable": False, "error": str(exc)})
        problems.append(f"API at {report['url']}: {exc}")
    report["dnsmasq"] = _dnsmasq(cfg)
    problems += [f"{a['type']} on {a['host']} is not reporting (dead?)" for a in report["agents"] if not a["alive"]]
    problems += [f"dnsmasq for network {d['network']} is not running" for d in report["dnsmasq"] if not d["running"]]
    report["problems"] = problems
    if args.json:
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
    for a in report["agents"]:
        print(f"  agent:   {a['type']:<20} on {a['host']:<20} {'alive' if a['alive'] else 'DEAD'}")
    running = sum(1 for d in report["dnsmasq"] if d["running"])
    print(f"  dnsmasq: {running} running here for {len(report['dnsmasq'])} served networks")
    print("  status:  " + ("OK" if not problems else "PROBLEMS\n    - " + "\n    - ".join(problems)))
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
    p = parser()
    args = p.parse_args(argv)
    if not args.command:
        p.print_help()
        return 2
    try:
        cfg = _load(args)
        if args.command == "up":
            return cmd_up(args, cfg, with_agent=True)
        if args.command == "server":
            args.clouds_yaml = ""
            return cmd_up(args, cfg, with_agent=False)
        if args.command == "instance":
            from neutrino import lab
            return lab.main(cfg, args.action, args)
        if args.command == "agent":
            return cmd_agent(cfg)
        if args.command == "status":
            return cmd_status(args, cfg)
        if args.command == "cleanup":
            return cmd_cleanup(cfg)
        if args.command == "db-upgrade":
            from neutrino.db.engine import Database
            from neutrino.db.migrate import upgrade
            upgrade(Database(cfg.database_url))
            print(f"database at {cfg.database_url} is at the current schema")
            return 0
        if args.command == "clouds-yaml":
            from neutrino import server
            if args.write:
                print(server.write_clouds_yaml(cfg, Path(args.write)))
            else:
                import yaml
                print(yaml.safe_dump({"clouds": {"neutrino": server.clouds_entry(cfg)}}, sort_keys=False))
            return 0
    except ConfigError as exc:
        print(f"neutrino: configuration error: {exc}", file=sys.stderr)
        return 2
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
