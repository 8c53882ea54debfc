"""Several API servers on one PostgreSQL: the change feed across servers (LISTEN/NOTIFY), agents woken
only by what concerns their host, agents failing over between servers, the feed pruned below what live
agents need, a PostgreSQL restart survived, and ``neutrino status`` showing it all.

Two real ``neutrino server`` processes share a database on a PostgreSQL cluster of this module's own (it
is restarted by one test). Agents are played through the real agent channel: plain HTTP for the timing
tests, and the agent's own ``HttpSource`` (failover included) where a server dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from neutrino.agent.source import HttpSource
from neutrino.client import Client, Credentials
from neutrino.intent import codec
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

# agent_down_seconds: nothing that must stay alive can miss it by accident on a loaded machine (the agents
# that must die are made dead by `silence`). The servers' housekeeping (heartbeat, liveness, pruning) runs
# every DOWN / 3 = 10 s: each round also re-reads the feed on the server doing it, like the pump's own poll
# while it LISTENs (sync.feed: every 10 s).
DOWN = 30.0
# A change through one server wakes an agent waiting on the other this soon after the write returned: NOTIFY.
# Without it the waiter would be woken by the next re-read of its server, one of those every 10 s.
PROMPT = 3.0
WAIT = 25.0  # an agent's long poll here (the server's limit is 55 s, the client's timeout 30 s)
DEADLINE = 30.0  # for anything that must happen eventually


def until(cond: Callable[[], object], what: Callable[[], str] | str, timeout: float = DEADLINE) -> None:
    """Poll ``cond`` until it holds; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


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


def status(raw: Raw) -> dict[str, Any]:
    found: dict[str, Any] = ok(raw("GET", "/agent-api/v1/status"))
    return found


def waiting(fn: Any) -> tuple[ThreadPoolExecutor, Any]:
    pool = ThreadPoolExecutor(1)
    return pool, pool.submit(fn)


def parked(raw: Raw) -> None:
    """Until a long poll waits on the server behind ``raw``."""
    until(lambda: status(raw)["feed"]["waiters"] >= 1, "the wait never reached the server")


def read_through(raw: Raw, rev: int) -> None:
    """Until the server behind ``raw`` has read the feed through ``rev``: every change up to it has been
    offered to its waiters."""
    until(lambda: status(raw)["feed"]["tail"] >= rev, lambda: f"feed read through {status(raw)['feed']}, not {rev}")


def woken_by(sim: SimHost, after: int, write: Callable[[], object]) -> tuple[int, float]:
    """``sim`` waits after ``after`` (parked on its server), then ``write`` is made: the revision it is
    woken with and how long after the write returned."""
    pool, fut = waiting(lambda: (sim.wait(after, WAIT), time.monotonic()))
    try:
        parked(sim.raw)
        write()
        written = time.monotonic()
        (rev, _), woke = fut.result(WAIT + 30)
    finally:
        pool.shutdown()
    return rev, max(0.0, woke - written)


def silence(pair: Pair, host: str) -> None:
    """``host``'s agents are dead: their last heartbeat goes back past agent_down_seconds (what a host that
    stopped reporting looks like DOWN seconds later, without waiting for it)."""
    from neutrino.db.schema import agents

    engine = sa.create_engine(pair.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(agents).where(agents.c.host == host)
                         .values(heartbeat_timestamp=datetime.datetime(2000, 1, 1)))
    finally:
        engine.dispose()


def forget(raw: Raw, host: str) -> None:
    """Delete ``host``'s agents (they pin nothing in a later test)."""
    for ag in ok(raw("GET", "/v2.0/agents", params={"host": host}))["agents"]:
        ok(raw("DELETE", f"/v2.0/agents/{ag['id']}"), 204)


class Heartbeats:
    """``sim``'s agents stay alive whatever the load: they report ``revision`` now, then every second from a
    thread until ``stop``."""

    def __init__(self, sim: SimHost, revision: int, kinds: tuple[AgentType, ...] = (AgentType.L2,)) -> None:
        self.sim, self.revision, self.kinds = sim, revision, kinds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _beat(self) -> None:
        for kind in self.kinds:
            self.sim.beat(self.revision, kind)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(httpx.HTTPError, AssertionError):  # a missed beat: the next one counts
                self._beat()

    def start(self) -> Heartbeats:
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)


def test_a_change_through_b_wakes_an_agent_waiting_on_a_promptly(pair: Pair) -> None:
    """Woken by NOTIFY: within PROMPT of the write, in order, every time. A waiter A only re-reads the feed
    for (every 10 s) would wait seconds in most of these rounds, since they follow one another at once."""
    a, b = pair.raw(0), pair.raw(1)
    until(lambda: all(status(r)["feed"]["listening"] for r in (a, b)), "the servers do not LISTEN")
    x = SimHost(uniq("hx"), a)
    net = network(b)
    port(b, net, x.name)  # x has the network
    after = revision(a, x.name)
    latencies, seen = [], []
    for _ in range(10):
        rev, latency = woken_by(x, after, lambda: port(b, net, "elsewhere"))
        assert rev > after, (rev, after)
        latencies.append(latency)
        seen.append(rev)
        after = rev
    assert seen == sorted(seen)
    assert max(latencies) < PROMPT, latencies
    print(f"cross-server wake: p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")


def test_a_write_elsewhere_does_not_wake_the_agent(pair: Pair) -> None:
    """Changes that do not concern x, through both servers, reach x's server while it waits and leave it
    waiting; a port on its own network (even unbound, made through the other server) then wakes it."""
    a, b = pair.raw(0), pair.raw(1)
    x = SimHost(uniq("hx"), a)
    mine, other = network(b), network(b)
    pid = port(b, mine, x.name)
    after = revision(a, x.name)
    pool, fut = waiting(lambda: x.wait(after, WAIT))
    try:
        parked(a)
        port(b, other, uniq("hy"))       # another network, another host
        network(b)                       # a network nobody has
        port(a, other)                   # unbound, on the other network
        for path in (f"/v2.0/networks/{mine}/tags/blue", f"/v2.0/ports/{pid}/tags/blue"):
            assert b("PUT", path).status_code == 201  # tags: in no snapshot
        elsewhere = status(a)["revision"]
        read_through(a, elsewhere)       # offered to x's wait: one of them concerning x would wake it now
        port(b, mine)
        rev, _ = fut.result(WAIT + 30)
    finally:
        pool.shutdown()
    assert rev > elsewhere, (rev, elsewhere)  # woken by the last port, none of the others


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
        until(lambda: "snapshot" in out, "the follower never fetched its snapshot")
        with ThreadPoolExecutor(6) as pool:
            made = list(pool.map(lambda i: port((a, b)[i % 2], net), range(60)))

        def missing() -> set[str]:
            return set(made) - set(out["snapshot"]["ports"])

        until(lambda: not missing(), lambda: f"never seen: {sorted(missing())}")
    finally:
        stop.set()
        follower.join(30)


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
    until(lambda: "ports" in out, "the follower never fetched its snapshot")
    return t


def sees_all(out: dict[str, Any], made: list[str]) -> None:
    """Until the follower's last snapshot has every port in ``made``."""
    until(lambda: not set(made) - out.get("ports", set()),
          lambda: f"lost: {sorted(set(made) - out.get('ports', set()))}; errors: {out.get('errors', [])[-3:]}")


def create_retrying(raw: Raw, net: str, deadline: float = DEADLINE) -> str:
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
        for _ in range(5):
            made.append(port(b, net))
        assert source.current == 0  # still with A
        killed = time.monotonic()
        pair.servers[0].proc.send_signal(getattr(signal, how))
        for _ in range(10):
            made.append(port(b, net))
            time.sleep(0.05)
        sees_all(out, made)
        moved = time.monotonic() - killed
        assert source.current == 1 and source.failovers >= 1
        print(f"{how}: every change seen through B {moved:.2f} s after A was stopped")
    finally:
        stop.set()
        follower.join(30)
        pair.servers[0].proc.wait(30)
        pair.start(0)


def test_calls_in_flight_when_the_server_dies_all_move_to_the_next_one(pair: Pair) -> None:
    """An agent has several calls open at once (its long poll, a snapshot, a heartbeat). When their server
    dies they all fail; the first to fail moves the agent to the next server, and the others follow it
    there: none moves it back to the dead one (and fails again)."""
    a, b = pair.raw(0), pair.raw(1)
    net = network(b)
    hosts = [uniq("hx") for _ in range(3)]
    for host in hosts:
        port(b, net, host)
    source = source_for(pair)

    async def calls() -> list[int | BaseException]:
        try:
            revs = [(await source.snapshot(host)).revision for host in hosts]
            waits = [asyncio.create_task(source.wait(rev, WAIT, host)) for rev, host in zip(revs, hosts, strict=True)]
            await asyncio.to_thread(until, lambda: status(a)["feed"]["waiters"] >= len(hosts),
                                    "the waits never reached A")
            pair.servers[0].proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(pair.servers[0].proc.wait, 30)
            await asyncio.to_thread(until, lambda: status(b)["feed"]["waiters"] >= len(hosts)
                                    or any(w.done() for w in waits), "the waits never moved to B")
            for host in hosts:
                await asyncio.to_thread(port, b, net, host)  # wakes every one of them, on B
            return await asyncio.gather(*waits, return_exceptions=True)
        finally:
            await source.aclose()

    try:
        found = asyncio.run(calls())
        assert all(isinstance(rev, int) for rev in found), found
        assert source.current == 1 and source.failovers == 1
    finally:
        pair.servers[0].proc.wait(30)
        pair.start(0)


def test_the_feed_is_pruned_below_what_live_agents_need(pair: Pair) -> None:
    """The feed is pruned through what the live agents have applied, never past the lowest: q, alive at
    `low`, pins it there while p is at `high`. Once q is dead it pins nothing: pruned through `high`,
    where p pins it. q coming back from below the pruned part is woken at once."""
    a, b = pair.raw(0), pair.raw(1)
    p, q = SimHost(uniq("hp"), a), SimHost(uniq("hq"), b)
    net = network(a)
    port(a, net, p.name)
    port(a, net, q.name)
    low = revision(a, q.name)
    q_alive = Heartbeats(q, low).start()          # q has applied `low` (and says so every second)
    p_alive: Heartbeats | None = None
    try:
        for _ in range(5):
            port(b, net)                          # changes q needs: they concern its network
        high = revision(a, p.name)
        p_alive = Heartbeats(p, high).start()     # p has applied them all
        until(lambda: status(a)["pruned_through"] >= low, lambda: f"never pruned through {low}: {status(a)}")
        assert status(a)["pruned_through"] == low  # what q needs is kept although p needs none of it
        q_alive.stop()
        silence(pair, q.name)
        assert [ag["alive"] for ag in ok(a("GET", "/v2.0/agents", params={"host": q.name}))["agents"]] == [False]
        until(lambda: status(a)["pruned_through"] >= high, lambda: f"never pruned through {high}: {status(a)}")
        assert status(a)["pruned_through"] == high  # p still needs what came after
        engine = sa.create_engine(pair.database_url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                oldest = conn.execute(sa.text("SELECT min(seq) FROM changes")).scalar_one()
        finally:
            engine.dispose()
        assert oldest > high
        # q comes back from below the pruned part: nothing left after `low` concerns it (p's registration
        # does not), yet it is woken with the current revision (it fetches a full snapshot, as always)...
        rev, took = q.wait(low, WAIT)
        assert rev > high, (rev, high)
        # ... while p, up to date, waits as usual.
        after = revision(a, p.name)
        rev, took = p.wait(after, 1)
        assert rev == after and took >= 0.9
    finally:
        q_alive.stop()
        if p_alive is not None:
            p_alive.stop()
        forget(a, p.name)
        forget(a, q.name)


def test_a_postgresql_restart_is_survived(pair: Pair) -> None:
    """Writes succeed again through both servers, both LISTEN again (woken promptly, as before), and the
    agent following them loses no change made across the restart."""
    a, b = pair.raw(0), pair.raw(1)
    host = uniq("hx")
    net = network(b)
    port(b, net, host)
    source = source_for(pair)
    stop, out = threading.Event(), dict[str, Any]()
    follower = run_follower(source, host, stop, out)
    made: list[str] = []
    try:
        made.append(port(b, net))
        pair.pg.restart()
        made.append(create_retrying(b, net))
        made.append(create_retrying(a, net))
        until(lambda: all(status(r)["feed"]["listening"] for r in (a, b)), "the servers do not LISTEN again")
        x = SimHost(uniq("hx"), a)
        port(b, net, x.name)
        after = revision(a, x.name)
        latencies = []
        for _ in range(4):
            rev, latency = woken_by(x, after, lambda: made.append(port(b, net)))
            assert rev > after, (rev, after)
            latencies.append(latency)
            after = rev
        assert max(latencies) < PROMPT, latencies
        sees_all(out, made)
    finally:
        stop.set()
        follower.join(30)


def test_neutrino_status_shows_servers_agents_and_what_is_not_converged(pair: Pair, tmp_path: Path) -> None:
    a = pair.raw(0)
    x = SimHost(uniq("hx"), a)
    net = network(a)  # a change before x's snapshot: revision 0 means "none applied yet", even on a fresh database
    applied = revision(a, x.name)
    for kind in AgentType:
        x.beat(applied, kind)
    waiting_port = port(a, net, x.name)  # bound, never wired: DOWN
    time.sleep(2.2)  # at x's heartbeats from now on, a change older than 2 s it has not applied: it is behind
    alive = Heartbeats(x, applied, tuple(AgentType)).start()
    try:
        env = dict(os.environ, NEUTRINO_AGENT__SERVER_URL=f"{pair.servers[0].url},{pair.servers[1].url}",
                   NEUTRINO_AGENT__PASSWORD="secret", NEUTRINO_STATE_DIR=str(tmp_path))
        started = time.monotonic()
        done = subprocess.run([str(VENV_BIN / "neutrino"), "status", "--json"], env=env, capture_output=True,
                              text=True, timeout=120)
        took = time.monotonic() - started
        assert done.returncode == 1, done.stderr  # something has not converged
        report = json.loads(done.stdout)
        urls = {s["url"] for s in report["servers"] if s["alive"]}
        assert {srv.url for srv in pair.servers} <= urls
        mine = [ag for ag in report["agents"] if ag["host"] == x.name]
        assert {ag["type"] for ag in mine} == {k.value for k in AgentType} and all(ag["alive"] for ag in mine), mine
        l2 = next(ag for ag in mine if ag["type"] == AgentType.L2.value)
        assert l2["hosts"]["ports"] == 1 and l2["hosts"]["networks"] == 1 and l2["heartbeat"]
        assert l2["revision"] == applied and l2["behind"] >= 1
        assert any(x.name in p and "has not applied" in p for p in report["problems"]), report["problems"]
        assert waiting_port in report["unconverged"]["ports_not_active"]["ids"] or \
            report["unconverged"]["ports_not_active"]["count"] > len(report["unconverged"]["ports_not_active"]["ids"])
        assert any(waiting_port[:8] in p or "not ACTIVE" in p for p in report["problems"]), report["problems"]
        text = subprocess.run([str(VENV_BIN / "neutrino"), "status"], env=env, capture_output=True, text=True,
                              timeout=120).stdout
        assert "server:" in text and x.name in text, text
        print(f"neutrino status: {took:.2f} s")
    finally:
        alive.stop()
        forget(a, x.name)


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


# The one SQLite server prunes every second or so. Its agent's liveness changes nothing below: pruning
# stops short of the newest row (x's own registration) whether x is alive or not.
SQLITE_DOWN = 4.0


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("scale-sqlite")
    srv = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite",
                       {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": str(SQLITE_DOWN)})
    try:
        yield srv
    finally:
        srv.stop()


def housekeeping_after(raw: Raw, url: str, since: str) -> None:
    """Until the server at ``url`` has pruned (a whole housekeeping round: its heartbeat, liveness, pruning)
    after the server-side time ``since``: two of its heartbeats later than that."""
    since_at = datetime.datetime.fromisoformat(since.rstrip("Z"))
    seen: set[datetime.datetime] = set()

    def two() -> bool:
        for s in status(raw)["servers"]:
            at = datetime.datetime.fromisoformat(s["heartbeat"].rstrip("Z"))
            if s["url"] == url and at > since_at:
                seen.add(at)
        return len(seen) >= 2

    until(two, f"no housekeeping round of {url} after {since}")


def test_sqlite_one_server_filters_wakes_and_prunes(sqlite_server: Server) -> None:
    """The embedded backend: the same host filter (a change elsewhere read by the server leaves the agent
    waiting, one on its network wakes it); the feed pruned through what the agent has applied, its newest
    row kept (the revision never goes back)."""
    raw = Raw(sqlite_server.url, admin_token(sqlite_server))
    x = SimHost(uniq("hx"), raw)
    mine, other = network(raw), network(raw)
    port(raw, mine, x.name)
    after = revision(raw, x.name)
    pool, fut = waiting(lambda: x.wait(after, WAIT))
    try:
        parked(raw)
        port(raw, other, uniq("hy"))
        elsewhere = status(raw)["revision"]
        read_through(raw, elsewhere)
        port(raw, mine)
        rev, _ = fut.result(WAIT + 30)
    finally:
        pool.shutdown()
    assert rev > elsewhere, (rev, elsewhere)
    x.beat(rev)
    newest = revision(raw, x.name)
    until(lambda: status(raw)["pruned_through"] >= rev, lambda: f"never pruned through {rev}: {status(raw)}")
    assert status(raw)["pruned_through"] == rev and revision(raw, x.name) == newest
    x.beat(newest)  # nothing newer than the newest row: it stays
    beat_at = next(ag["heartbeat"] for ag in status(raw)["agents"] if ag["host"] == x.name)
    housekeeping_after(raw, sqlite_server.url, beat_at)
    assert status(raw)["pruned_through"] == newest - 1 and revision(raw, x.name) == newest
    port(raw, mine)
    assert revision(raw, x.name) == newest + 1
    forget(raw, x.name)


def test_a_snapshot_fetched_after_a_write_has_it_while_other_hosts_fetch_theirs(pair: Pair) -> None:
    """The servers share what the snapshots of one revision have in common (sync/snapshot.Memo) while a
    burst of hosts fetches: a port whose create has returned is in the next snapshot of every host of
    its network, through either server, however many snapshots were just built."""
    a, b = pair.raw(0), pair.raw(1)
    net = network(a)
    hosts = [uniq("hm") for _ in range(4)]
    for h in hosts:
        port(a, net, h)
    stop = threading.Event()

    def fetch(raw: Raw, host: str) -> None:
        while not stop.is_set():
            SimHost(host, raw).snapshot()

    pool = ThreadPoolExecutor(4)
    busy = [pool.submit(fetch, (a, b)[i % 2], h) for i, h in enumerate(hosts)]
    try:
        for k in range(30):
            made = port((a, b)[k % 2], net, hosts[k % len(hosts)])
            for raw in (a, b):
                for h in hosts[:2]:
                    assert made in SimHost(h, raw).snapshot()["ports"], (k, h)
    finally:
        stop.set()
        pool.shutdown()
    for f in busy:
        f.result()


def test_a_snapshot_since_a_revision_names_the_untouched_networks_and_merges_to_the_whole(pair: Pair) -> None:
    """An agent holding a snapshot asks ``since`` its revision (intent/delta.py): the networks no change
    touched since come back as ids, not pieces, and the agent's merge of the two is what a whole fetch
    says -- after a port on one of its networks, a port elsewhere, a subnet change, a new member of the
    default group, a new network of the host and the host's last port on one gone; through either server."""
    a, b = pair.raw(0), pair.raw(1)
    host = uniq("hd")
    nets = {k: network(a) for k in "ABCDE"}
    subs = {k: ok(a("POST", "/v2.0/subnets", json={"subnet": {
        "network_id": nets[k], "ip_version": 4, "cidr": f"10.{70 + i}.0.0/24", "enable_dhcp": False}}),
        201)["subnet"]["id"] for i, k in enumerate("ABCD")}
    mine = {k: port(a, nets[k], host) for k in "ABC"}
    grouped = ok(a("POST", "/v2.0/ports", json={"port": {"network_id": nets["C"], "binding:host_id": host}}),
                 201)["port"]  # the admin project's default group: the snapshot carries it with its members
    assert grouped["security_groups"]
    source = source_for(pair)

    def kept(raw: Raw, since: int) -> set[str]:
        body = ok(raw("GET", "/agent-api/v1/snapshot", params={"host": host, "since": since}))
        return {k for k, n in nets.items() if n in body.get("kept", ())}

    async def steps() -> None:
        held = await source.snapshot(host)
        assert set(held.networks) == {nets[k] for k in "ABC"}
        writes: list[tuple[str, Callable[[Raw], object], set[str]]] = [
            ("a port of A elsewhere", lambda r: port(r, nets["A"], uniq("other")), {"B", "C"}),
            ("a port on a network not the host's", lambda r: port(r, nets["D"], uniq("other")), {"A", "B", "C"}),
            ("B's subnet changed", lambda r: ok(r("PUT", f"/v2.0/subnets/{subs['B']}", json={
                "subnet": {"dns_nameservers": ["10.0.0.53"]}})), {"A", "C"}),
            ("a new member of the default group, elsewhere", lambda r: ok(r("POST", "/v2.0/ports", json={
                "port": {"network_id": nets["D"], "binding:host_id": uniq("other")}}), 201), {"A", "B", "C"}),
            ("a new network of the host", lambda r: port(r, nets["E"], host), {"A", "B", "C"}),
            ("the host's last port on A gone", lambda r: ok(r("DELETE", f"/v2.0/ports/{mine['A']}"), 204),
             {"B", "C", "E"}),
        ]
        for i, (what, write, expected) in enumerate(writes):
            raw = (a, b)[i % 2]
            write(raw)
            assert kept((b, a)[i % 2], held.revision) == expected, what
            merged = await source.snapshot(host, held)
            whole = await source.snapshot(host)
            assert merged.revision == whole.revision > held.revision, what
            assert codec.encode(merged) == codec.encode(whole), what
            held = merged
        assert nets["A"] not in held.networks and held.security_groups
        members = next(iter(g for g in held.security_groups.values() if g.members)).members
        assert len(members) >= 2  # the default group's members: this host's port and the one elsewhere
        await source.aclose()

    asyncio.run(steps())
    assert source.kept == 2 + 3 + 2 + 3 + 3 + 3  # what was kept came from the held snapshot, not the wire
