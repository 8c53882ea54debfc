#!/usr/bin/env python3
"""Fuzz the whole Neutron v2.0 API for 5xx, requests that never answer, and non-NeutronError error bodies.

Starts its own `neutrino server` (SQLite in a temp state dir, on a free loopback port) unless --server is
given, creates fixtures (a shared and a private network, v4/v6 subnets, ports, a tag, agents, a member
project with its own network), then sends --requests deterministic requests from --seed. Prints a summary
and one minimal reproduction per distinct finding; exits 1 if there is any finding.

    .venv/bin/python bench/fuzz.py [--seed 1] [--requests 40000] [--timeout 10] [--json findings.json]
    .venv/bin/python bench/fuzz.py --server http://127.0.0.1:9696 --admin-password secret [--server-log FILE]

The generator lives in tests/api/fuzzing.py (tests/api/test_fuzz.py runs a bounded part of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.api.conftest import Server, start_server  # noqa: E402
from tests.api.fuzzing import SERVER_ENV, Fuzzer, Session  # noqa: E402


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--requests", type=int, default=40000,
                        help="about 40000 give every attribute every hostile value once")
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, seconds")
    parser.add_argument("--server", help="fuzz this running server instead of starting one")
    parser.add_argument("--admin-password", default="secret", help="with --server: the identity admin password")
    parser.add_argument("--server-log", type=Path, help="with --server: its log, to name the cause of each 500")
    parser.add_argument("--json", type=Path, help="also write the findings (full bodies) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp state dir (server.log, neutrino.db)")
    args = parser.parse_args(argv)

    server: Server | None = None
    tmp: Path | None = None
    if args.server:
        base, log_path = args.server, args.server_log
    else:
        tmp = Path(tempfile.mkdtemp(prefix="neutrino-fuzz-"))
        db_url = f"sqlite:///{tmp / 'neutrino.db'}"
        server = start_server(tmp, db_url, "sqlite", SERVER_ENV)
        base, log_path = server.url, tmp / "server.log"
        progress(f"server {base}, state in {tmp}")

    def restart() -> str:
        nonlocal server
        assert server is not None and tmp is not None
        progress("server wedged: restarting it")
        server.proc.kill()
        server.proc.wait()
        server = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite", SERVER_ENV)
        return server.url

    session = Session(base, args.admin_password, args.timeout)
    try:
        fixtures = session.setup()
        fuzzer = Fuzzer(session, fixtures, args.seed, log_path=log_path,
                        restart=restart if server is not None else None, progress=progress)
        report = fuzzer.run(args.requests)
    finally:
        session.close()
        if server is not None:
            server.stop()
    print(report.render())
    if args.json:
        args.json.write_text(json.dumps({"requests": report.requests, "wedged": report.wedged,
                                         "findings": report.as_json()}, indent=1))
    if tmp is not None:
        if args.keep:
            print(f"\nstate kept in {tmp}")
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
