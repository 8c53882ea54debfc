"""The multi-host lab: one API server and N hosts made of namespaces on this machine, kept between commands.

``neutrino lab up --hosts N`` starts ``neutrino server`` on 127.0.0.1:P and N hosts ``host1..hostN``
(``hosts.Host``: a network + mount namespace on the lab's underlay, with ``eth1`` on the public flat
segment and the ``upstream`` namespace at 172.24.4.1), one ``neutrino agent`` in each, and returns once
every agent of every host is alive. The processes outlive the command: each runs in a session of its own
with its output in a log file, and the lab is described in its state directory D:

  lab.json           prefix of its namespaces, port, clouds.yaml, the server's and each host's holder and
                     agent as (pid, start time): a pid reused by another process is never taken for ours
  lab.lock           held by every command that changes the lab
  neutrino.db, neutrino.sock, neutrino.pid, admin-password   the server's (``neutrino server --state-dir D``)
  hosts/<name>/      each host's agent state directory (owner id, agent/, instances/)
  logs/server.log, logs/<name>.log

The namespaces are ``<prefix>-<name>``, ``<prefix>-ul`` and ``<prefix>-upstream`` with a prefix derived
from D, so ``lab down`` finds them even without ``lab.json``. Every command is idempotent: ``up`` makes
what is missing (a larger N grows the lab; stopped hosts start again), ``down`` removes whatever is left.
``host stop`` is a power cut (every process in the host killed, its namespace removed); ``host start``
makes the host again with the same name and address, and its agent catches up from its state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neutrino.config import Config
from neutrino.errors import NeutrinoError
from neutrino.hosts import PUBLIC_INTERFACE, PUBLIC_PHYSNET, Host, Process, Underlay, remove_namespace
from neutrino.intent.model import AgentType

LAB_FILE = "lab.json"
SOCKET = "neutrino.sock"
UPSTREAM = "upstream"
DEFAULT_HOSTS = 2
MAX_HOSTS = 250  # host N is 198.18.0.N on the underlay
SERVER_TIMEOUT = 30.0
AGENTS_TIMEOUT = 50.0

Say = Callable[[str], None]


@dataclass
class HostRecord:
    index: int                       # hostN has index N: its underlay address 198.18.0.N
    holder: Process | None = None    # None: stopped
    agent: Process | None = None


@dataclass
class LabRecord:
    prefix: str
    port: int
    clouds_yaml: str
    config: str = ""                 # the configuration file lab up was given ("" none)
    heartbeat_seconds: float = 10.0  # of the lab's agents
    server: Process | None = None
    hosts: dict[str, HostRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def proc(p: Process | None) -> list[int] | None:
            return None if p is None else [p.pid, p.start]

        return {"prefix": self.prefix, "port": self.port, "clouds_yaml": self.clouds_yaml, "config": self.config,
                "heartbeat_seconds": self.heartbeat_seconds, "server": proc(self.server),
                "hosts": {n: {"index": h.index, "holder": proc(h.holder), "agent": proc(h.agent)}
                          for n, h in sorted(self.hosts.items(), key=lambda kv: kv[1].index)}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabRecord:
        def proc(v: Any) -> Process | None:
            return None if v is None else Process(int(v[0]), int(v[1]))

        return cls(str(data["prefix"]), int(data["port"]), str(data["clouds_yaml"]), str(data.get("config", "")),
                   float(data.get("heartbeat_seconds", 10.0)), proc(data.get("server")),
                   {str(n): HostRecord(int(h["index"]), proc(h.get("holder")), proc(h.get("agent")))
                    for n, h in data.get("hosts", {}).items()})


def lab_dir(cfg: Config) -> Path:
    return Path(cfg.state_dir).resolve()


def prefix_for(d: Path) -> str:
    """The prefix of a lab's namespaces: from its state directory, so it can always be found again."""
    return "nl" + hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:6]


def load(d: Path) -> LabRecord | None:
    try:
        return LabRecord.from_json(json.loads((d / LAB_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise NeutrinoError(f"{d / LAB_FILE} is unreadable ({exc}); `neutrino lab down` removes what is left") \
            from None


def is_lab(cfg: Config) -> bool:
    return (lab_dir(cfg) / LAB_FILE).exists()


def require(cfg: Config) -> LabRecord:
    rec = load(lab_dir(cfg))
    if rec is None:
        raise NeutrinoError(f"no lab in {lab_dir(cfg)} (start one with `neutrino lab up --hosts N`; "
                            "--state-dir or NEUTRINO_STATE_DIR say where)")
    return rec


def _save(d: Path, rec: LabRecord) -> None:
    tmp = d / f".{LAB_FILE}.tmp"
    tmp.write_text(json.dumps(rec.to_json(), indent=1) + "\n")
    os.replace(tmp, d / LAB_FILE)


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lab.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _neutrino() -> list[str]:
    exe = Path(sys.executable).parent / "neutrino"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "neutrino.cli"]


def _namespaces(prefix: str) -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-"))
    return []


def _ours(p: Process | None, *words: str) -> bool:
    """``p`` still runs and is the neutrino process it was recorded as."""
    if p is None or not p.alive():
        return False
    cmd = p.cmdline()
    return all(w in cmd for w in words)


def _lab_cfg(cfg: Config, rec: LabRecord) -> Config:
    """``cfg`` as the lab's server has it (its port, its socket): clients of the lab use this."""
    cfg = copy.deepcopy(cfg)
    cfg.api.port, cfg.api.host, cfg.api.socket, cfg.api.public_url = rec.port, "127.0.0.1", SOCKET, ""
    return cfg


def host_dir(d: Path, name: str) -> Path:
    return d / "hosts" / name


def _host(rec: LabRecord, name: str) -> Host:
    if name not in rec.hosts:
        raise NeutrinoError(f"no host {name!r} in this lab (hosts: {', '.join(rec.hosts) or 'none'})")
    hr = rec.hosts[name]
    ul = Underlay(rec.prefix)
    host = Host(f"{rec.prefix}-{name}", name, ul, ul.address(hr.index), hr.holder)
    return host


def running_host(cfg: Config, rec: LabRecord, name: str) -> Host:
    host = _host(rec, name)
    if not host.running():
        raise NeutrinoError(f"host {name} is stopped (`neutrino lab host start {name}`)")
    return host


def host_env(cfg: Config, rec: LabRecord, name: str) -> dict[str, str]:
    """The environment of neutrino commands inside a host: its agent, and ``instance`` commands."""
    d = lab_dir(cfg)
    env = dict(os.environ)
    password = ""
    if cfg.identity.mode == "builtin":
        from neutrino.identity.credentials import admin_password

        password = admin_password(cfg)
    env.update({
        "NEUTRINO_STATE_DIR": str(host_dir(d, name)), "NEUTRINO_AGENT__HOST": name,
        "NEUTRINO_AGENT__SERVER_URL": f"unix:{d / SOCKET}", "NEUTRINO_AGENT__AUTH_URL": "",
        "NEUTRINO_AGENT__USERNAME": cfg.identity.admin_user, "NEUTRINO_AGENT__PASSWORD": password,
        "NEUTRINO_AGENT__PROJECT": cfg.identity.admin_project,
        "NEUTRINO_AGENT__LOCAL_IP": str(_host(rec, name).address.ip),
        "NEUTRINO_AGENT__PHYSICAL_INTERFACE_MAPPINGS": f"{PUBLIC_PHYSNET}:{PUBLIC_INTERFACE}",
        "NEUTRINO_AGENT__HEARTBEAT_SECONDS": str(rec.heartbeat_seconds), "NEUTRINO_API__SOCKET": "",
    })
    env.pop("NEUTRINO_CONFIG", None)
    if rec.config:
        env["NEUTRINO_CONFIG"] = rec.config
    return env


def in_host(cfg: Config, rec: LabRecord, name: str, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``neutrino ARGS`` inside a lab host as that host's own tool (its state dir, its agent's server)."""
    host = running_host(cfg, rec, name)
    argv = [*host.enter(), *_neutrino(), *args, "--state-dir", str(host_dir(lab_dir(cfg), name))]
    done: subprocess.CompletedProcess[str] = subprocess.run(argv, env=host_env(cfg, rec, name), text=True,
                                                            check=False, **kw)
    return done


# -- up ---------------------------------------------------------------------------------------------------
def _refuse_foreign(d: Path) -> None:
    """A state directory of another neutrino (`neutrino up`, a server) is never taken over."""
    found = [n for n in ("neutrino.db", "neutrino.pid", "agent", "hosts") if (d / n).exists()]
    if found:
        raise NeutrinoError(f"{d} holds a neutrino that is not a lab ({', '.join(found)}); give the lab a state "
                            "directory of its own (--state-dir DIR)")


def _port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise NeutrinoError(f"port {port} on 127.0.0.1 is in use ({exc.strerror}); give the lab another "
                                "one with --port") from None


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


def _ensure_server(cfg: Config, d: Path, rec: LabRecord, say: Say) -> None:
    if _ours(rec.server, "server"):
        return
    _port_free(rec.port)
    (d / "logs").mkdir(exist_ok=True)
    (d / SOCKET).unlink(missing_ok=True)
    env = dict(os.environ, NEUTRINO_API__SOCKET=SOCKET)
    env.pop("NEUTRINO_CONFIG", None)
    argv = [*_neutrino(), "server", "--state-dir", str(d), "--host", "127.0.0.1", "--port", str(rec.port),
            *(["--config", rec.config] if rec.config else [])]
    log = d / "logs" / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    rec.server = Process.of(proc.pid)
    _save(d, rec)
    deadline = time.monotonic() + SERVER_TIMEOUT
    while not _answers(rec.port, d / SOCKET):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            rec.server = None
            _save(d, rec)
            raise NeutrinoError(f"the lab's server did not start ({log}: {_tail(log)})")
        time.sleep(0.05)
    say(f"server: http://127.0.0.1:{rec.port} (pid {proc.pid}, log {log})")


def _answers(port: int, sock: Path) -> bool:
    if not sock.exists():
        return False
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ensure_underlay(rec: LabRecord, say: Say) -> Underlay:
    ul = Underlay(rec.prefix)
    if os.path.exists(f"/run/netns/{ul.namespace}"):
        return ul
    # Without its underlay nothing of the lab's kernel side is of use (e.g. after a reboot): start afresh.
    for ns in _namespaces(rec.prefix):
        remove_namespace(ns)
    for hr in rec.hosts.values():
        hr.holder = hr.agent = None
    ul = Underlay.create(rec.prefix)
    say(f"underlay: {ul.namespace}, public segment with {ul.upstream} at 172.24.4.1/24")
    return ul


def _ensure_host(d: Path, rec: LabRecord, ul: Underlay, name: str) -> tuple[Host, bool]:
    """The host, made (again) when it is not running; whether it was made."""
    host = _host(rec, name)
    if host.running():
        return host, False
    hr = rec.hosts[name]
    hr.holder = hr.agent = None
    if os.path.exists(f"/run/netns/{host.namespace}"):
        remove_namespace(host.namespace)  # a host whose holder died: whatever is left in it goes
    host = ul.add_host(name, hr.index, detach=True)
    hr.holder = host.holder
    _save(d, rec)
    return host, True


def _ensure_agent(cfg: Config, d: Path, rec: LabRecord, host: Host) -> bool:
    """The host's agent, started when it is not running; whether it was started."""
    hr = rec.hosts[host.name]
    if _ours(hr.agent, "agent"):
        return False
    host_dir(d, host.name).mkdir(parents=True, exist_ok=True)
    (d / "logs").mkdir(exist_ok=True)
    with open(d / "logs" / f"{host.name}.log", "ab") as out:
        proc = host.popen([*_neutrino(), "agent", "--state-dir", str(host_dir(d, host.name))],
                          env=host_env(cfg, rec, host.name), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                          start_new_session=True)
    hr.agent = Process.of(proc.pid)
    _save(d, rec)
    return True


def up(cfg: Config, hosts: int | None, port: int | None, clouds_yaml: str | None, config: str | None,
       say: Say) -> LabRecord:
    d = lab_dir(cfg)
    if hosts is not None and not 1 <= hosts <= MAX_HOSTS:
        raise NeutrinoError(f"--hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
    if not (d / LAB_FILE).exists():
        _refuse_foreign(d)  # before the lock file is made in what may be another neutrino's state dir
    with _locked(d):
        rec = load(d)
        if rec is None:
            _refuse_foreign(d)
            rec = LabRecord(prefix_for(d), port or cfg.api.port,
                            str(Path(clouds_yaml or "~/.config/openstack/clouds.yaml").expanduser().resolve())
                            if clouds_yaml != "" else "", str(Path(config).resolve()) if config else "",
                            min(cfg.agent.heartbeat_seconds, cfg.agent.agent_down_seconds / 3))
        else:
            if port and port != rec.port:
                if _ours(rec.server, "server"):
                    raise NeutrinoError(f"the lab's server listens on port {rec.port}; `neutrino lab down` "
                                        "before moving it")
                rec.port = port
            if clouds_yaml is not None:
                rec.clouds_yaml = str(Path(clouds_yaml).expanduser().resolve()) if clouds_yaml else ""
        _save(d, rec)
        count = max(hosts or 0, len(rec.hosts)) or DEFAULT_HOSTS
        if hosts and hosts < len(rec.hosts):
            say(f"the lab has {len(rec.hosts)} hosts; --hosts {hosts} does not shrink it (`lab host stop`)")
        cfg = _lab_cfg(cfg, rec)
        _ensure_server(cfg, d, rec, say)
        ul = _ensure_underlay(rec, say)
        since: dict[str, float] = {}
        for i in range(1, count + 1):
            name = f"host{i}"
            rec.hosts.setdefault(name, HostRecord(i))
            host, made = _ensure_host(d, rec, ul, name)
            started = _ensure_agent(cfg, d, rec, host)
            since[name] = time.time() if started else 0.0
            if made or started:
                say(f"{name}: namespace {host.namespace}, underlay {host.address} (VXLAN endpoint), "
                    f"{PUBLIC_INTERFACE} on physnet {PUBLIC_PHYSNET}; agent "
                    f"{'started' if started else 'running'} (log {d / 'logs' / (name + '.log')})")
        if rec.clouds_yaml:
            from neutrino import server

            server.write_clouds_yaml(cfg, Path(rec.clouds_yaml))
            say(f"clouds.yaml: cloud 'neutrino' (admin) written to {rec.clouds_yaml}")
        began = time.monotonic()
        asyncio.run(_wait_alive(cfg, d, since))
        say(f"lab up: {count} hosts, every agent alive ({time.monotonic() - began:.1f} s after the last start)")
        return rec


def _started(agent: dict[str, Any]) -> float:
    try:
        ts = dt.datetime.fromisoformat(str(agent.get("started_at") or ""))
    except ValueError:
        return 0.0
    return (ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)).timestamp()


async def _wait_alive(cfg: Config, d: Path, since: dict[str, float], timeout: float = AGENTS_TIMEOUT) -> None:
    """Until every host named has each kind of agent alive, (re)started after ``since`` (its start time;
    0: any); started_at has whole seconds."""
    from neutrino.client import for_config

    kinds = {k.value for k in AgentType}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with for_config(cfg) as api:
        while True:
            agents = (await api.call("GET", "/v2.0/agents"))["agents"]
            waiting = sorted(h for h, t in since.items()
                             if not kinds <= {a["agent_type"] for a in agents if a["host"] == h and a["alive"]
                                              and _started(a) >= int(t) - 1})
            if not waiting:
                return
            if loop.time() > deadline:
                raise NeutrinoError(f"agents of {', '.join(waiting)} are not alive after {timeout:.0f} s (see "
                                    + ", ".join(str(d / "logs" / f"{h}.log") for h in waiting) + ")")
            await asyncio.sleep(0.1)


# -- hosts ------------------------------------------------------------------------------------------------
def host_stop(cfg: Config, name: str) -> None:
    """A power cut: every process in the host (its agent, dnsmasq, instances' clients) is killed and its
    namespaces go with their links; the server learns it only by the missing heartbeats."""
    d = lab_dir(cfg)
    require(cfg)
    with _locked(d):
        rec = require(cfg)
        host = _host(rec, name)
        host.destroy()
        hr = rec.hosts[name]
        hr.holder = hr.agent = None
        _save(d, rec)


def host_start(cfg: Config, name: str) -> bool:
    """The host made again (same name, address, state directory) and its agent started; returns once its
    agents are alive. Whether it was stopped."""
    d = lab_dir(cfg)
    require(cfg)
    with _locked(d):
        rec = require(cfg)
        _host(rec, name)
        ul = Underlay(rec.prefix)
        if not os.path.exists(f"/run/netns/{ul.namespace}") or not _ours(rec.server, "server"):
            raise NeutrinoError("the lab's server or underlay is gone: `neutrino lab up` makes them again")
        cfg = _lab_cfg(cfg, rec)
        host, made = _ensure_host(d, rec, ul, name)
        started = _ensure_agent(cfg, d, rec, host)
        asyncio.run(_wait_alive(cfg, d, {name: time.time() if started else 0.0}))
        if made and instance_records(cfg, rec, name):  # its instances come back with it
            done = in_host(cfg, rec, name, ["instance", "boot"])
            if done.returncode != 0:
                raise NeutrinoError(f"host {name} is back, its agents alive, but not all of its instances")
        return made


def run(cfg: Config, name: str, argv: list[str]) -> int:
    """``lab exec``: the command inside a host (or the upstream), with this terminal; its exit status."""
    rec = require(cfg)
    if not argv:
        raise NeutrinoError("no command given: neutrino lab exec NAME -- COMMAND [ARG...]")
    if name == UPSTREAM:
        ns = f"{rec.prefix}-{UPSTREAM}"
        if not os.path.exists(f"/run/netns/{ns}"):
            raise NeutrinoError(f"the lab's upstream namespace {ns} is gone (`neutrino lab up`)")
        prefix = ["ip", "netns", "exec", ns]
    else:
        prefix = running_host(cfg, rec, name).enter()
    return subprocess.run([*prefix, *argv], check=False).returncode


# -- down -------------------------------------------------------------------------------------------------
def down(cfg: Config, say: Say) -> None:
    """Everything the lab made goes: processes in its namespaces, the namespaces (and their links), its
    agents and server, the daemons' run directories, its database (SQLite) and hosts' state. Logs stay."""
    from neutrino.dataplane.daemons import RUN_ROOT

    d = lab_dir(cfg)
    if not (d / LAB_FILE).exists() and not _namespaces(prefix_for(d)):
        say(f"no lab in {d}")  # and no lock file left in what may be another neutrino's state dir
        return
    with _locked(d):
        rec = load(d)
        prefix = rec.prefix if rec is not None else prefix_for(d)
        namespaces = _namespaces(prefix)
        if rec is None and not namespaces:  # not a lab (or one gone already): nothing here is the lab's
            say(f"no lab in {d}")
            return
        ul = Underlay(prefix)
        hosts = [n for n in namespaces if n not in (ul.namespace, ul.upstream)]
        for ns in [*hosts, ul.upstream, ul.namespace]:
            if ns in namespaces:
                remove_namespace(ns)
        for hr in rec.hosts.values() if rec is not None else ():
            for p in (hr.agent, hr.holder):
                if _ours(p, "agent") or _ours(p, "sleep"):
                    assert p is not None
                    p.signal()
        server = rec.server if rec is not None else None
        if server is None:  # no record: the pid file, if it is this directory's server
            with contextlib.suppress(OSError, ValueError, IndexError):
                server = Process.of(int((d / "neutrino.pid").read_text().split()[0]))
        if _ours(server, "server") and server is not None and str(d) in " ".join(server.cmdline()):
            server.stop(10)
        for owner in sorted((d / "hosts").glob("*/owner-id")):
            shutil.rmtree(RUN_ROOT / owner.read_text().strip(), ignore_errors=True)
        shutil.rmtree(d / "hosts", ignore_errors=True)
        for name in ("neutrino.db", "neutrino.db-wal", "neutrino.db-shm", SOCKET, "neutrino.pid", LAB_FILE):
            (d / name).unlink(missing_ok=True)
        say(f"lab down: {len(hosts)} hosts, the underlay and the upstream removed; server stopped "
            f"(logs kept in {d / 'logs'})")


# -- instances on lab hosts -------------------------------------------------------------------------------
def instance_host(cfg: Config, rec: LabRecord, name: str) -> str | None:
    """The lab host whose instance ``name`` is."""
    d = lab_dir(cfg)
    for host in rec.hosts:
        if (host_dir(d, host) / "agent" / "instances" / name / "instance.json").exists():
            return host
    return None


def instance_records(cfg: Config, rec: LabRecord, host: str) -> list[dict[str, Any]]:
    found = []
    for f in sorted((host_dir(lab_dir(cfg), host) / "agent" / "instances").glob("*/instance.json")):
        with contextlib.suppress(OSError, ValueError):
            found.append(dict(json.loads(f.read_text())))
    return found


def forget_instance(cfg: Config, rec: LabRecord, host: str, name: str) -> str:
    """Delete an instance of a stopped host: its port (gone already is fine), then its bookkeeping (its
    kernel side went with the host). The port's id."""
    from neutrino.client import for_config
    from neutrino.errors import ClientError

    d = host_dir(lab_dir(cfg), host) / "agent" / "instances" / name
    port_id = str(json.loads((d / "instance.json").read_text())["port_id"])

    async def delete() -> None:
        async with for_config(_lab_cfg(cfg, rec)) as api:
            try:
                await api.call("DELETE", f"/v2.0/ports/{port_id}")
            except ClientError as exc:
                if exc.status != 404:
                    raise

    asyncio.run(delete())
    shutil.rmtree(d, ignore_errors=True)
    return port_id


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without these options (``--name VALUE`` or ``--name=VALUE``)."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in names:
            skip = True
        elif not word.startswith(tuple(f"{n}=" for n in names)):
            out.append(word)
    return out
