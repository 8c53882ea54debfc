"""Several API servers on one PostgreSQL: the change feed across servers (LISTEN/NOTIFY), agents woken
only by what concerns their host, agents failing over between servers, the feed pruned below what live
agents need, a PostgreSQL restart survived, and ``neutrino status`` showing it all.

Two real ``neutrino server`` processes share a database on a PostgreSQL cluster of this module's own (it
is restarted by one test). Agents are played through the real agent channel: plain HTTP for the timing
tests, and the agent's own ``HttpSource`` (failover included) where a server dies.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from neutrino.agent.source import HttpSource
from neutrino.client import Client, Credentials
from neutrino.intent.model import AgentType
from tests.api.conftest import (
    PG_BIN,
    VENV_BIN,
    Postgres,
    Raw,
    Server,
    pg_cluster,
    start_server,
    uniq,
)
from tests.integration.conftest import admin_token

DOWN = 4.0  # agent_down_seconds: a silent agent stops pinning the feed within seconds
PROMPT = 1.0  # a change through one server wakes an agent waiting on the other within this


@dataclass
class Pair:
    """Two servers on one database; either can be killed and started again."""
    pg: Postgres
    database_url: str
    dirs: list[Path]
    servers: list[Server] = field(default_factory=list)

    def start(self, i: int) -> Server:
        srv = start_server(self.dirs[i], self.database_url, "postgresql",
                           {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": str(DOWN)})
        if i < len(self.servers):
            self.servers[i] = srv
        else:
            self.servers.append(srv)
        return srv

    def raw(self, i: int) -> Raw:
        return Raw(self.servers[i].url, admin_token(self.servers[i]))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    with pg_cluster() as pg:
        p = Pair(pg, pg.new_database(), [tmp_path_factory.mktemp("scale-a"), tmp_path_factory.mktemp("scale-b")])
        try:
            p.start(0)
            p.start(1)
            yield p
        finally:
            for srv in p.servers:
                srv.stop()


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


@dataclass
class SimHost:
    """A host's agent played through the agent channel of one server."""
    name: str
    raw: Raw

    def beat(self, revision: int = 0, kind: AgentType = AgentType.L2) -> None:
        ok(self.raw("POST", "/agent-api/v1/report", json={
            "host": self.name, "agent_type": kind.value, "configurations": {}, "revision": revision}))

    def wait(self, after: int, timeout: float) -> tuple[int, float]:
        started = time.monotonic()
        found = ok(self.raw("GET", "/agent-api/v1/wait", params={"after": after, "timeout": timeout,
                                                                 "host": self.name}))
        return int(found["revision"]), time.monotonic() - started

    def snapshot(self) -> dict[str, Any]:
        found: dict[str, Any] = ok(self.raw("GET", "/agent-api/v1/snapshot", params={"host": self.name}))
        return found


def network(raw: Raw) -> str:
    return str(ok(raw("POST", "/v2.0/networks", json={"network": {"name": uniq("n")}}), 201)["network"]["id"])


def port(raw: Raw, net: str, host: str = "") -> str:
    """A port in no security group: what concerns a host is then only its networks (a member of a group
    concerns every host with members of a group that admits it, e.g. the project's default group)."""
    body: dict[str, Any] = {"network_id": net, "name": uniq("p"), "port_security_enabled": False,
                            "security_groups": []}
    if host:
        body["binding:host_id"] = host
    return str(ok(raw("POST", "/v2.0/ports", json={"port": body}), 201)["port"]["id"])


def revision(raw: Raw, host: str) -> int:
    return int(ok(raw("GET", "/agent-api/v1/snapshot", params={"host": host}))["revision"])


def waiting(fn: Any) -> tuple[ThreadPoolExecutor, Any]:
    pool = ThreadPoolExecutor(1)
    return pool, pool.submit(fn)


def test_a_change_through_b_wakes_an_agent_waiting_on_a_promptly(pair: Pair) -> None:
    a, b = pair.raw(0), pair.raw(1)
    x = SimHost(uniq("hx"), a)
    net = network(b)
    port(b, net, x.name)  # x has the network
    after = revision(a, x.name)
    latencies, seen = [], []
    for _ in range(15):
        pool, fut = waiting(lambda after=after: x.wait(after, 10))
        time.sleep(0.05)  # the wait is parked on A
        made = time.monotonic()
        port(b, net, "elsewhere")
        rev, _ = fut.result(10)
        latencies.append(time.monotonic() - made)
        pool.shutdown()
        assert rev > after, (rev, after)
        seen.append(rev)
        after = rev
    assert seen == sorted(seen)
    # The servers poll the feed once a second without LISTEN: half a second in the median.
    assert max(latencies) < PROMPT and statistics.median(latencies) < 0.3, latencies
    print(f"cross-server wake: p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")


def test_a_write_elsewhere_does_not_wake_the_agent(pair: Pair) -> None:
    a, b = pair.raw(0), pair.raw(1)
    x = SimHost(uniq("hx"), a)
    mine, other = network(b), network(b)
    port(b, mine, x.name)
    after = revision(a, x.name)
    pool, fut = waiting(lambda: x.wait(after, 2.5))
    time.sleep(0.1)
    port(b, other, uniq("hy"))       # another network, another host
    network(b)                       # a network nobody has
    port(a, other)                   # unbound, on the other network
    rev, took = fut.result(10)
    pool.shutdown()
    assert rev == after and took >= 2.4, (rev, after, took)
    # ... while a port on its own network (even unbound, made through the other server) wakes it at once.
    pool, fut = waiting(lambda: x.wait(after, 10))
    time.sleep(0.1)
    port(b, mine)
    rev, took = fut.result(10)
    pool.shutdown()
    assert rev > after and took < 0.1 + PROMPT


def follow(raw: Raw, host: str, stop: threading.Event, out: dict[str, Any]) -> None:
    """Play an agent: wait for changes that concern ``host``, fetch the snapshot, keep the last one."""
    sim = SimHost(host, raw)
    snap = sim.snapshot()
    out["snapshot"] = snap
    after = snap["revision"]
    while not stop.is_set():
        rev, _ = sim.wait(after, 1)
        if rev > after:
            snap = sim.snapshot()
            out["snapshot"], out["woken"] = snap, out.get("woken", 0) + 1
            after = max(rev, snap["revision"])


def test_concurrent_writers_on_both_servers_lose_no_change(pair: Pair) -> None:
    """Ports made at once through both servers: the agent's last snapshot (fetched only when woken) has
    every one of them. A change committed after the agent moved past its seq would be lost here."""
    a, b = pair.raw(0), pair.raw(1)
    host = uniq("hx")
    net = network(a)
    port(a, net, host)
    stop, out = threading.Event(), dict[str, Any]()
    follower = threading.Thread(target=follow, args=(a, host, stop, out))
    follower.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            made = list(pool.map(lambda i: port((a, b)[i % 2], net), range(60)))
        deadline = time.monotonic() + 3
        while set(made) - set(out["snapshot"]["ports"]):
            assert time.monotonic() < deadline, f"never seen: {sorted(set(made) - set(out['snapshot']['ports']))}"
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(10)


def test_concurrent_network_creates_through_both_servers_all_succeed(pair: Pair) -> None:
    """Networks made at once through both servers each get a VXLAN segment of their own; none is refused
    with 409 (two transactions must not draw the same id and collide on it)."""
    a, b = pair.raw(0), pair.raw(1)

    def make(i: int) -> httpx.Response:
        return (a, b)[i % 2]("POST", "/v2.0/networks", json={"network": {"name": uniq("seg")}})

    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(make, range(64)))
    assert [r.status_code for r in found] == [201] * 64, {r.text for r in found if r.status_code != 201}
    vnis = [r.json()["network"]["provider:segmentation_id"] for r in found]
    assert all(vnis) and len(set(vnis)) == 64


async def _source_follow(source: HttpSource, host: str, stop: threading.Event, out: dict[str, Any]) -> None:
    snap = await source.snapshot(host)
    out["ports"] = set(snap.ports)
    after = snap.revision
    while not stop.is_set():
        try:
            rev = await source.wait(after, 1, host)
            if rev > after:
                snap = await source.snapshot(host)
                out["ports"] = set(snap.ports)
                after = max(rev, snap.revision)
        except Exception as exc:  # every server down for a moment: the agent tries again, as agent.loop does
            out.setdefault("errors", []).append(str(exc))
            await asyncio.sleep(0.2)
    await source.aclose()


def source_for(pair: Pair) -> HttpSource:
    return HttpSource([Client(s.url, Credentials("admin", "secret", "admin", s.url, "/identity/v3"))
                       for s in pair.servers])


def run_follower(source: HttpSource, host: str, stop: threading.Event, out: dict[str, Any]) -> threading.Thread:
    t = threading.Thread(target=lambda: asyncio.run(_source_follow(source, host, stop, out)))
    t.start()
    return t


def create_retrying(raw: Raw, net: str, deadline: float = 30) -> str:
    """A port, made once the server answers (it may be restarting its database connections)."""
    end = time.monotonic() + deadline
    while True:
        try:
            resp = raw("POST", "/v2.0/ports", json={"port": {"network_id": net, "name": uniq("p"),
                                                              "port_security_enabled": False, "security_groups": []}})
            if resp.status_code == 201:
                return str(resp.json()["port"]["id"])
        except httpx.HTTPError:
            pass
        assert time.monotonic() < end, "the server never came back"
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_an_agent_fails_over_when_its_server_dies_and_loses_nothing(pair: Pair, how: str) -> None:
    b = pair.raw(1)
    host = uniq("hx")
    net = network(b)
    port(b, net, host)
    source = source_for(pair)
    stop, out = threading.Event(), dict[str, Any]()
    follower = run_follower(source, host, stop, out)
    made: list[str] = []
    try:
        time.sleep(0.3)
        for _ in range(5):
            made.append(port(b, net))
        assert source.current == 0  # still with A
        killed = time.monotonic()
        pair.servers[0].proc.send_signal(getattr(signal, how))
        for _ in range(10):
            made.append(port(b, net))
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while set(made) - out.get("ports", set()):
            assert time.monotonic() < deadline, f"lost: {sorted(set(made) - out.get('ports', set()))}"
            time.sleep(0.02)
        moved = time.monotonic() - killed
        assert source.current == 1 and source.failovers >= 1
        print(f"{how}: every change seen through B {moved:.2f} s after A was stopped")
    finally:
        stop.set()
        follower.join(15)
        pair.servers[0].proc.wait(15)
        pair.start(0)


def status(raw: Raw) -> dict[str, Any]:
    found: dict[str, Any] = ok(raw("GET", "/agent-api/v1/status"))
    return found


def test_the_feed_is_pruned_below_what_live_agents_need(pair: Pair) -> None:
    a, b = pair.raw(0), pair.raw(1)
    p, q = SimHost(uniq("hp"), a), SimHost(uniq("hq"), b)
    net = network(a)
    port(a, net, p.name)
    port(a, net, q.name)
    low = revision(a, q.name)
    q.beat(low)                        # q has applied `low`, then goes silent
    for _ in range(5):
        port(b, net)
    high = revision(a, p.name)
    p.beat(high)
    time.sleep(2.5)                    # a few housekeeping rounds while q is alive: it pins the feed
    assert status(a)["pruned_through"] <= low
    deadline = time.monotonic() + DOWN + 10
    while status(a)["pruned_through"] < high:  # q is dead: only p counts
        assert time.monotonic() < deadline, status(a)["pruned_through"]
        p.beat(high)
        time.sleep(0.3)
    assert status(a)["pruned_through"] == high  # p still needs what came after
    engine = sa.create_engine(pair.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            oldest = conn.execute(sa.text("SELECT min(seq) FROM changes")).scalar_one()
    finally:
        engine.dispose()
    assert oldest > high
    # q comes back from below the pruned part: woken at once (it fetches a full snapshot, as always)...
    rev, took = q.wait(low, 10)
    assert rev >= high and took < 0.5
    # ... while p, up to date, waits as usual.
    rev, took = p.wait(revision(a, p.name), 1)
    assert took >= 0.9
    p.beat(rev)


def test_a_postgresql_restart_is_survived(pair: Pair) -> None:
    a, b = pair.raw(0), pair.raw(1)
    host = uniq("hx")
    net = network(b)
    port(b, net, host)
    source = source_for(pair)
    stop, out = threading.Event(), dict[str, Any]()
    follower = run_follower(source, host, stop, out)
    made: list[str] = []
    try:
        time.sleep(0.3)
        made.append(port(b, net))
        pair.pg.restart()
        made.append(create_retrying(b, net))
        made.append(create_retrying(a, net))
        deadline = time.monotonic() + 20
        while not all(status(r)["feed"]["listening"] for r in (a, b)):  # both LISTEN again
            assert time.monotonic() < deadline
            time.sleep(0.1)
        x = SimHost(uniq("hx"), a)
        port(b, net, x.name)
        after = revision(a, x.name)
        pool, fut = waiting(lambda: x.wait(after, 10))
        time.sleep(0.05)
        started = time.monotonic()
        made.append(port(b, net))
        rev, _ = fut.result(10)
        pool.shutdown()
        assert rev > after and time.monotonic() - started < PROMPT
        deadline = time.monotonic() + 5
        while set(made) - out.get("ports", set()):
            assert time.monotonic() < deadline, f"lost: {sorted(set(made) - out.get('ports', set()))}"
            time.sleep(0.05)
    finally:
        stop.set()
        follower.join(15)


def test_neutrino_status_shows_servers_agents_and_what_is_not_converged(pair: Pair, tmp_path: Path) -> None:
    a = pair.raw(0)
    x = SimHost(uniq("hx"), a)
    applied = revision(a, x.name)
    for kind in AgentType:
        x.beat(applied, kind)
    net = network(a)
    waiting_port = port(a, net, x.name)  # bound, never wired: DOWN
    time.sleep(2.2)  # a change older than 2 s at the agent's heartbeat, not applied by it: it is behind
    x.beat(applied)
    env = dict(os.environ, NEUTRINO_AGENT__SERVER_URL=f"{pair.servers[0].url},{pair.servers[1].url}",
               NEUTRINO_AGENT__PASSWORD="secret", NEUTRINO_STATE_DIR=str(tmp_path))
    started = time.monotonic()
    done = subprocess.run([str(VENV_BIN / "neutrino"), "status", "--json"], env=env, capture_output=True,
                          text=True, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr  # something has not converged
    report = json.loads(done.stdout)
    urls = {s["url"] for s in report["servers"] if s["alive"]}
    assert {srv.url for srv in pair.servers} <= urls
    mine = [ag for ag in report["agents"] if ag["host"] == x.name]
    assert {ag["type"] for ag in mine} == {k.value for k in AgentType} and all(ag["alive"] for ag in mine)
    l2 = next(ag for ag in mine if ag["type"] == AgentType.L2.value)
    assert l2["hosts"]["ports"] == 1 and l2["hosts"]["networks"] == 1 and l2["heartbeat"]
    assert l2["revision"] == applied and l2["behind"] >= 1
    assert any(x.name in p and "has not applied" in p for p in report["problems"]), report["problems"]
    assert waiting_port in report["unconverged"]["ports_not_active"]["ids"] or \
        report["unconverged"]["ports_not_active"]["count"] > len(report["unconverged"]["ports_not_active"]["ids"])
    assert any(waiting_port[:8] in p or "not ACTIVE" in p for p in report["problems"]), report["problems"]
    text = subprocess.run([str(VENV_BIN / "neutrino"), "status"], env=env, capture_output=True, text=True,
                          timeout=60).stdout
    assert "server:" in text and x.name in text, text
    print(f"neutrino status: {took:.2f} s")


def test_feed_rows_become_visible_in_seq_order(pair: Pair) -> None:
    """A transaction that draws a later seq cannot commit before one holding an earlier seq (db.feed's
    lock): a reader that has seen seq N never sees a row below N appear afterwards."""
    from neutrino.db import feed
    from neutrino.db.engine import Database

    db = Database(pair.database_url)
    first_written, release, second_done = threading.Event(), threading.Event(), threading.Event()

    def change(conn: sa.Connection, name: str) -> None:
        feed.record(conn, {"resource": "test", "resource_id": name, "op": "update", "network_id": None,
                           "host": None, "at": datetime.datetime(2026, 1, 1)})

    def first() -> None:
        with db.engine.connect() as conn, conn.begin():
            change(conn, "first")
            first_written.set()
            release.wait(10)

    def second() -> None:
        first_written.wait(10)
        db.write(lambda conn: change(conn, "second"))
        second_done.set()

    try:
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(first), pool.submit(second)]
            assert first_written.wait(10)
            assert not second_done.wait(0.5), "a later change committed while an earlier one was open"
            release.set()
            for f in done:
                f.result(10)
        with db.engine.connect() as conn:
            order = [r[0] for r in conn.execute(sa.text(
                "SELECT resource_id FROM changes WHERE resource = 'test' ORDER BY seq"))]
        assert order == ["first", "second"]
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("scale-sqlite")
    srv = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite",
                       {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": str(DOWN)})
    try:
        yield srv
    finally:
        srv.stop()


def test_sqlite_one_server_filters_wakes_and_prunes(sqlite_server: Server) -> None:
    """The embedded backend: the same host filter, woken by the writer itself; the feed pruned below the
    live agent's revision, its newest row kept (the revision never goes back)."""
    raw = Raw(sqlite_server.url, admin_token(sqlite_server))
    x = SimHost(uniq("hx"), raw)
    mine, other = network(raw), network(raw)
    port(raw, mine, x.name)
    after = revision(raw, x.name)
    pool, fut = waiting(lambda: x.wait(after, 1.5))
    time.sleep(0.1)
    port(raw, other, uniq("hy"))
    rev, took = fut.result(10)
    pool.shutdown()
    assert rev == after and took >= 1.4
    pool, fut = waiting(lambda: x.wait(after, 10))
    time.sleep(0.1)
    started = time.monotonic()
    port(raw, mine)
    rev, _ = fut.result(10)
    pool.shutdown()
    assert rev > after and time.monotonic() - started < 0.5
    x.beat(rev)
    newest = revision(raw, x.name)
    deadline = time.monotonic() + 10
    while status(raw)["pruned_through"] < rev:
        assert time.monotonic() < deadline, status(raw)
        time.sleep(0.2)
    assert status(raw)["pruned_through"] == rev and revision(raw, x.name) == newest
    x.beat(newest)  # nothing newer than the newest row: it stays
    time.sleep(3)
    assert status(raw)["pruned_through"] == newest - 1 and revision(raw, x.name) == newest
    port(raw, mine)
    assert revision(raw, x.name) == newest + 1
