"""Real agents in two throwaway hosts, each given two API servers on one PostgreSQL
(``agent.server_url: unix:A,unix:B``): a change through either server converges on both hosts (their
VXLAN FDB), killing the server the agents talk to mid-stream loses no change (they fail over), and a
PostgreSQL restart is survived by servers and agents with nothing lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from neutrino.hosts import Underlay
from tests.api.conftest import PG_BIN, Postgres, Server, pg_cluster, start_server
from tests.integration.conftest import PREFIXES, STATE_DIRS, Agent, admin_token, remove_run_dirs
from tests.integration.test_l2pop_lab import fdb

pytestmark = pytest.mark.xdist_group(name="kernel")
FLOOD = "00:00:00:00:00:00"
# The agents fetch their snapshot unasked only every HEARTBEAT seconds (and long-poll that long): well past
# CONVERGE, so what converges within it was brought by the feed (or by a failed call made again on the
# other server). Nothing here may go dead by accident on a loaded machine: DOWN is far past HEARTBEAT.
HEARTBEAT = 50.0  # below the servers' 55 s limit on a long poll
DOWN = 300.0
CONVERGE = 30.0


@dataclass
class Cluster:
    pg: Postgres
    database_url: str
    dirs: list[Path]
    servers: list[Server]
    agents: dict[str, Agent]

    def api(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=self.servers[i].url, headers={"X-Auth-Token": admin_token(self.servers[i])},
                            timeout=30)

    def restart_server(self, i: int) -> None:
        self.servers[i] = start(self.dirs[i], self.database_url)


def start(d: Path, database_url: str) -> Server:
    return start_server(d, database_url, "postgresql", {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": str(DOWN)})


@pytest.fixture(scope="module")
def cluster(nothing_left_behind: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    tmp = tmp_path_factory.mktemp("scale-lab")
    STATE_DIRS.append(tmp)
    prefix = f"nt{uuid.uuid4().hex[:6]}"
    PREFIXES.append(prefix)
    with pg_cluster() as pg, contextlib.ExitStack() as undo:
        url = pg.new_database()
        dirs = [tmp / "a", tmp / "b"]
        c = Cluster(pg, url, dirs, [], {})
        for d in dirs:
            d.mkdir()
            c.servers.append(start(d, url))
        def stop_servers() -> None:
            for srv in c.servers:
                srv.stop()

        undo.callback(stop_servers)
        undo.callback(remove_run_dirs, tmp)
        underlay = Underlay.create(prefix)
        undo.callback(underlay.destroy)
        sockets = ",".join(f"unix:{d / 'neutrino.sock'}" for d in dirs)
        for name in ("h1", "h2"):
            host = underlay.add_host(name)
            state = tmp / name
            state.mkdir()
            env = dict(os.environ, NEUTRINO_STATE_DIR=str(state), NEUTRINO_AGENT__HOST=name,
                       NEUTRINO_AGENT__SERVER_URL=sockets, NEUTRINO_AGENT__PASSWORD="secret",
                       NEUTRINO_AGENT__LOCAL_IP=str(host.address.ip), NEUTRINO_AGENT__HEARTBEAT_SECONDS=str(HEARTBEAT),
                       NEUTRINO_LOG__LEVEL="INFO", NEUTRINO_API__SOCKET="")
            agent = Agent(host, state, env)
            undo.callback(agent.stop)
            agent.start()
            c.agents[name] = agent
        with c.api(0) as api:
            deadline = time.monotonic() + 30
            while len(api.get("/v2.0/agents").json()["agents"]) < 6:
                assert time.monotonic() < deadline, "agents did not register"
                time.sleep(0.1)
        yield c


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def bound_port(api: httpx.Client, net: str, host: str) -> str:
    """A port bound to ``host`` (in no security group), made once the server answers (it may be
    reconnecting to its database); its MAC."""
    end = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            resp = api.post("/v2.0/ports", json={"port": {
                "network_id": net, "binding:host_id": host, "device_owner": "compute:lab",
                "port_security_enabled": False, "security_groups": []}})
            if resp.status_code == 201:
                return str(resp.json()["port"]["mac_address"])
        assert time.monotonic() < end, "the server never came back"
        time.sleep(0.1)


def converge(agent: Agent, vni: int, want: set[tuple[str, str]]) -> None:
    """``want`` in the host's FDB within CONVERGE: woken by the feed (the agent's own periodic fetch of its
    snapshot comes only every HEARTBEAT seconds)."""
    deadline = time.monotonic() + CONVERGE
    while not want <= (fdb(agent, vni) or set()):
        if time.monotonic() >= deadline:
            log = (agent.state_dir / "agent.log").read_text()
            raise AssertionError(f"{agent.host.name} lacks {sorted(want - (fdb(agent, vni) or set()))}; "
                                 f"its log ends with:\n{log[-3000:]}")
        time.sleep(0.05)


def test_changes_through_either_server_converge_across_failover_and_a_database_restart(cluster: Cluster) -> None:
    h1, h2 = cluster.agents["h1"], cluster.agents["h2"]
    tun = {n: a.env["NEUTRINO_AGENT__LOCAL_IP"] for n, a in cluster.agents.items()}
    a, b = cluster.api(0), cluster.api(1)
    try:
        net = ok(a.post("/v2.0/networks", json={"network": {"name": "scale"}}), 201)["network"]
        vni = int(net["provider:segmentation_id"])
        m1 = bound_port(a, net["id"], "h1")   # through A
        m2 = bound_port(b, net["id"], "h2")   # through B
        converge(h1, vni, {(FLOOD, tun["h2"]), (m2, tun["h2"])})
        converge(h2, vni, {(FLOOD, tun["h1"]), (m1, tun["h1"])})

        # Kill A (both agents talk to it: it is first in their list) while ports are made through B.
        made = [bound_port(b, net["id"], "h2")]
        cluster.servers[0].proc.send_signal(signal.SIGKILL)
        cluster.servers[0].proc.wait(10)
        started = time.monotonic()
        made += [bound_port(b, net["id"], "h2") for _ in range(5)]
        converge(h1, vni, {(m, tun["h2"]) for m in made})
        print(f"after A was killed: h1 has every port made through B in {time.monotonic() - started:.2f} s")
        for agent in (h1, h2):
            log = (agent.state_dir / "agent.log").read_text()
            assert "moving to unix:" in log, log[-2000:]
        cluster.restart_server(0)
        a.close()
        a = cluster.api(0)

        # PostgreSQL restarts under both servers and both agents.
        cluster.pg.restart()
        m3 = bound_port(a, net["id"], "h1")
        m4 = bound_port(b, net["id"], "h2")
        converge(h2, vni, {(m3, tun["h1"])})
        converge(h1, vni, {(m4, tun["h2"])})
        agents = ok(b.get("/v2.0/agents"))["agents"]
        assert {x["host"] for x in agents if x["alive"]} == {"h1", "h2"}
    finally:
        a.close()
        b.close()
