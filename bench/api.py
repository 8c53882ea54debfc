#!/usr/bin/env python3
"""API figures: create rates (1 and 16 clients), listing 10,000 ports, server memory.

Starts its own `neutrino server` (SQLite by default, or --database-url) in a temp state dir on a free
loopback port, authenticates through the builtin identity, and prints a table. Not a test: run it by hand
or from CI's bench job and copy the numbers into docs/performance.md.

    .venv/bin/python bench/api.py [--ports 10000] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def token(url: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": "bench"}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
    resp = httpx.post(f"{url}/identity/v3/auth/tokens", json=body)
    resp.raise_for_status()
    return resp.headers["X-Subject-Token"]


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


async def rate(client: httpx.AsyncClient, n: int, clients: int, make: Any) -> float:
    """Requests per second for ``n`` creates spread over ``clients`` concurrent clients."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            path, kw = make(i)
            resp = await client.post(path, **kw)
            if resp.status_code != 201:
                raise RuntimeError(resp.text)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return n / (time.perf_counter() - start)


async def run(args: argparse.Namespace, url: str, pid: int) -> list[tuple[str, str]]:
    headers = {"X-Auth-Token": token(url)}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    out: list[tuple[str, str]] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
        for clients in (1, 16):
            n = args.count
            r_net = await rate(c, n, clients, lambda i: ("/v2.0/networks", {"json": {"network": {"name": f"n{i}"}}}))
            nets = (await c.get("/v2.0/networks", params={"fields": "id", "limit": n,
                                                          "sort_key": "created_at", "sort_dir": "desc"})).json()
            ids = [x["id"] for x in nets["networks"]]
            r_sub = await rate(c, n, clients, lambda i, ids=ids: ("/v2.0/subnets", {"json": {"subnet": {
                "network_id": ids[i], "ip_version": 4, "cidr": f"10.{i // 256}.{i % 256}.0/24"}}}))
            big = (await c.post("/v2.0/networks", json={"network": {"name": "big"}})).json()["network"]["id"]
            await c.post("/v2.0/subnets", json={"subnet": {"network_id": big, "ip_version": 4,
                                                           "cidr": f"172.{16 + clients}.0.0/16"}})
            r_port = await rate(c, n, clients, lambda i, big=big: ("/v2.0/ports", {"json": {"port": {
                "network_id": big, "name": f"p{i}"}}}))
            progress(f"{clients} client(s): networks {r_net:.0f}/s, subnets {r_sub:.0f}/s, ports {r_port:.0f}/s")
            out += [(f"network creates/s, {clients} client(s)", f"{r_net:.0f}"),
                    (f"subnet creates/s, {clients} client(s)", f"{r_sub:.0f}"),
                    (f"port creates/s, {clients} client(s)", f"{r_port:.0f}")]
            if clients == 16:
                ports = (await c.get("/v2.0/ports", params={"network_id": big})).json()["ports"]
                ips = [p["fixed_ips"][0]["ip_address"] for p in ports]
                out.append(("duplicate addresses (16 clients)", str(len(ips) - len(set(ips)))))
        have = len((await c.get("/v2.0/ports", params={"fields": "id"})).json()["ports"])
        if have < args.ports:
            big = (await c.post("/v2.0/networks", json={"network": {"name": "fill"}})).json()["network"]["id"]
            await c.post("/v2.0/subnets", json={"subnet": {"network_id": big, "ip_version": 4,
                                                           "cidr": "100.64.0.0/16"}})
            progress(f"filling up to {args.ports} ports")
            await rate(c, args.ports - have, 16, lambda i: ("/v2.0/ports", {"json": {"port": {"network_id": big}}}))
        for label, params in (("all fields", {}), ("fields=id,name", {"fields": ["id", "name"]})):
            times = []
            for _ in range(5):
                start = time.perf_counter()
                resp = await c.get("/v2.0/ports", params=params)
                times.append(time.perf_counter() - start)
                count = len(resp.json()["ports"])
            out.append((f"list {count} ports, {label} (median of 5)", f"{statistics.median(times) * 1000:.0f} ms"))
    out.append((f"server RSS holding {count} ports", f"{rss_mb(pid):.0f} MB"))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="creates per rate measurement (default 1000)")
    p.add_argument("--ports", type=int, default=10000, help="ports to hold for the list/RSS figures")
    p.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    args = p.parse_args()
    state = Path(tempfile.mkdtemp(prefix="neutrino-bench-"))
    port = free_port()
    env = dict(os.environ, NEUTRINO_API__PORT=str(port), NEUTRINO_IDENTITY__ADMIN_PASSWORD="bench",
               NEUTRINO_LOG__LEVEL="WARNING", NEUTRINO_DATABASE__URL=args.database_url,
               NEUTRINO_QUOTAS__NETWORK="-1", NEUTRINO_QUOTAS__SUBNET="-1", NEUTRINO_QUOTAS__PORT="-1")
    proc = subprocess.Popen([str(BIN / "neutrino"), "server", "--state-dir", str(state)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        rows = asyncio.run(run(args, url, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
        subprocess.run(["rm", "-rf", str(state)], check=False)
    width = max(len(k) for k, _ in rows)
    print(f"\nneutrino API bench ({'SQLite' if not args.database_url else args.database_url.split(':')[0]}, "
          f"{os.cpu_count()} cores)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
