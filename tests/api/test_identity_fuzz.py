"""The identity API fuzzed (``identity_fuzz``: every route, every attribute, hostile values) on a server of its
own per backend: no 5xx, every error in Keystone's shape, nothing logged as a failure, the admin still in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import backend_server
from tests.api.identity_fuzz import Fuzzer

pytestmark = pytest.mark.xdist_group("identity-fuzz")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_no_input_makes_the_identity_api_fail(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server = backend_server(request, backend, tmp_path)
    try:
        report = Fuzzer(server.url, "secret").run()
    finally:
        server.stop()
    shown = "\n".join(f"{f.status} {f.method} {f.path} {f.body[:100]!r} -> {f.answer[:200]}"
                      for f in report.server_errors[:20] + report.bad_shape[:20])
    assert not report.server_errors and not report.bad_shape, f"{report.summary()}\n{shown}"
    assert report.sent > 6000 and report.by_status.get(400, 0) > 3000 and report.by_status.get(413, 0) >= 8
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "failed" not in log, log[-3000:]
