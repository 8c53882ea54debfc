"""A bounded, deterministic run of the API fuzzer (tests/api/fuzzing.py; bench/fuzz.py runs it at length).

Its own server per backend (the fuzzer registers agents, creates hundreds of resources and writes quotas, which
must not leak into other tests' server), a fixed seed and a few thousand requests: no 5xx, no request
left unanswered, every error a NeutronError; afterwards the server still answers quickly and stops on
SIGTERM within a few seconds.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import Server, backend_server
from tests.api.fuzzing import SERVER_ENV, Fuzzer, Session

SEED = 20260101
REQUESTS = 8000
CLIENT_TIMEOUT = 5.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own per backend (PostgreSQL refuses values SQLite takes: both are fuzzed)."""
    srv = backend_server(request, request.param, tmp_path_factory.mktemp(f"fuzz-server-{request.param}"), SERVER_ENV)
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def test_fuzz_api(fuzz_server: Server) -> None:
    problems: list[str] = []
    session = Session(fuzz_server.url, "secret", CLIENT_TIMEOUT)
    try:
        fixtures = session.setup()
        report = Fuzzer(session, fixtures, SEED, log_path=fuzz_server.state_dir / "server.log",
                        max_timeouts=3).run(REQUESTS)

        # Still answering, and quickly: nothing left spinning or holding the database.
        for path, headers in (("/", {}), ("/v2.0/networks?limit=1", {"X-Auth-Token": session.tokens["admin"]})):
            started = time.monotonic()
            try:
                resp = httpx.get(fuzz_server.url + path, headers=headers, timeout=5)
            except httpx.HTTPError as exc:
                problems.append(f"after fuzzing, GET {path} failed: {exc!r}")
                continue
            took = time.monotonic() - started
            if resp.status_code != 200 or took > 2:
                problems.append(f"after fuzzing, GET {path} -> {resp.status_code} in {took:.1f} s")
    finally:
        session.close()

    # A clean stop on SIGTERM, even with whatever the fuzzer left in flight.
    fuzz_server.proc.send_signal(signal.SIGTERM)
    try:
        fuzz_server.proc.wait(5)
    except subprocess.TimeoutExpired:
        problems.append("the server did not stop within 5 s of SIGTERM after fuzzing")

    if report.requests < REQUESTS * 0.9:
        problems.append(f"only {report.requests} of {REQUESTS} requests were sent")
    if report.failed:
        problems.append(f"{len(report.findings())} distinct findings (5xx, timeouts, non-NeutronError errors)")
    assert not problems, "\n".join(problems) + "\n\n" + report.render()
