#!/usr/bin/env python3
"""Change feed figures with two API servers on one PostgreSQL (root not needed).

Starts a throwaway PostgreSQL cluster and two ``neutrino server`` processes on one database, and plays
``--agents`` agents on as many hosts through the real agent channel (half long-polling server A, half
server B, ``/agent-api/v1/wait?host=``). Each host has ports on two of ``--agents // 2`` networks; every
network is on (about) four hosts. Then ``--changes`` ports are created one at a time, alternately
through A and B, each on a random network, and for each the bench records which agents woke and how long
after the request was sent. Printed: wake latency p50/p99 for agents on the other server than the write,
and agents woken per port create (those of its network, against all of them without the host filter).

    .venv/bin/python bench/feed.py [--agents 10] [--changes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.api.conftest import PG_BIN, pg_cluster, start_server
from tests.integration.conftest import admin_token


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Sim:
    """One host's agent: long-polls one server for changes that concern it."""
    host: str
    client: httpx.AsyncClient
    server: int
    filtered: bool
    after: int = 0
    wakes: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, revision)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            params: dict[str, Any] = {"after": self.after, "timeout": 5}
            if self.filtered:
                params["host"] = self.host
            resp = await self.client.get("/agent-api/v1/wait", params=params)
            rev = int(resp.json()["revision"])
            if rev > self.after:
                self.wakes.append((time.monotonic(), rev))
                self.after = rev


async def shut_down(stop: asyncio.Event, tasks: list[asyncio.Task[Any]], clients: list[httpx.AsyncClient]) -> None:
    """End the waiters (``Sim.run``) and close their clients."""
    stop.set()
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t
    for c in clients:
        await c.aclose()

async def bench(urls: list[str], token: str, agents: int, changes: int, filtered: bool,
                groups: bool) -> dict[str, Any]:
    headers = {"X-Auth-Token": token}
    clients = [httpx.AsyncClient(base_url=u, headers=headers, timeout=30) for u in urls]
    api = clients
    nets = []
    for _ in range(max(1, agents // 2)):
        resp = await api[0].post("/v2.0/networks", json={"network": {"name": "bench"}})
        nets.append(resp.json()["network"]["id"])
    hosts = [f"bench-{'f' if filtered else 'a'}{'g' if groups else ''}-{i}" for i in range(agents)]
    members: dict[str, set[str]] = {n: set() for n in nets}
    rng = random.Random(7)
    for i, host in enumerate(hosts):
        for net in (nets[i % len(nets)], nets[(i // 2 + 1) % len(nets)]):
            members[net].add(host)
            await api[0].post("/v2.0/ports", json={"port": {
                "network_id": net, "binding:host_id": host, "port_security_enabled": groups,
                **({} if groups else {"security_groups": []})}})
    start = int((await api[0].get("/agent-api/v1/snapshot", params={"host": hosts[0]})).json()["revision"])
    sims = [Sim(h, clients[i % 2], i % 2, filtered, start) for i, h in enumerate(hosts)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in sims]
    await asyncio.sleep(0.5)
    latencies: list[float] = []
    after_answer: list[float] = []
    woken: list[int] = []
    for k in range(changes):
        net = rng.choice(nets)
        via = k % 2
        before = {s.host: len(s.wakes) for s in sims}
        sent = time.monotonic()
        resp = await api[via].post("/v2.0/ports", json={"port": {
            "network_id": net, "port_security_enabled": groups, **({} if groups else {"security_groups": []})}})
        assert resp.status_code == 201, resp.text
        answered = time.monotonic()
        await asyncio.sleep(0.25)  # every wake this create causes has arrived
        new = [s for s in sims if len(s.wakes) > before[s.host]]
        woken.append(len(new))
        latencies += [s.wakes[before[s.host]][0] - sent for s in new if s.server != via]
        after_answer += [s.wakes[before[s.host]][0] - answered for s in new if s.server != via]
    await shut_down(stop, tasks, clients)
    expected = statistics.mean(len(m) for m in members.values())
    return {"latencies": latencies, "after_answer": after_answer, "woken": woken, "expected": expected}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--changes", type=int, default=200)
    args = ap.parse_args()
    if not (PG_BIN / "initdb").exists():
        print("PostgreSQL server binaries are not installed", file=sys.stderr)
        return 1
    with pg_cluster() as pg, tempfile.TemporaryDirectory() as tmp:
        url = pg.new_database()
        servers = []
        for name in ("a", "b"):
            (Path(tmp) / name).mkdir()
            servers.append(start_server(Path(tmp) / name, url, "postgresql"))
        try:
            token = admin_token(servers[0])
            urls = [s.url for s in servers]
            rows = []
            for filtered, groups in ((True, False), (False, False), (True, True)):
                found = asyncio.run(bench(urls, token, args.agents, args.changes, filtered, groups))
                rows.append((filtered, groups, found))
        finally:
            for s in servers:
                s.stop()
    print(f"\n{args.agents} agents on {args.agents} hosts (half on each of 2 servers), {args.changes} port creates "
          "alternately through both servers, PostgreSQL, one machine\n")
    print("| agents wait with | ports | POST sent -> agent on the other server woken, p50 / p99 | "
          "POST answered -> woken, p50 / p99 | agents woken per port create (mean, max) | "
          "hosts of the port's network (mean) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for filtered, groups, found in rows:
        lat = [x * 1000 for x in found["latencies"]]
        ans = [x * 1000 for x in found["after_answer"]]
        print(f"| {'host filter' if filtered else 'no host filter'} | "
              f"{'default security group' if groups else 'no security group'} | "
              f"{statistics.median(lat):.0f} / {pct(lat, 0.99):.0f} ms | "
              f"{statistics.median(ans):.0f} / {pct(ans, 0.99):.0f} ms | "
              f"{statistics.mean(found['woken']):.1f}, {max(found['woken'])} | {found['expected']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
