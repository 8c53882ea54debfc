"""A lab whose setup fails half-way leaves nothing behind: no namespace with its prefix, no server, no agent.

Failures are forced at each kind of step: the underlay's bridge (its namespace exists by then), a host
after another host and its agent are up, a host name that is already taken.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import neutrino.hosts
from neutrino.hosts import Underlay
from tests.integration.conftest import PREFIXES, _netns, _our_processes, open_lab


def left_by(prefix: str, state: Path) -> tuple[list[str], list[str]]:
    return sorted(n for n in _netns() if n.startswith(prefix)), _our_processes([state])


def test_underlay_failing_half_way_stops_the_server(nothing_left_behind: None, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_ip = neutrino.hosts._ip

    def failing_ip(*args: str, ns: str | None = None) -> None:
        if "bridge" in args:  # the underlay's namespace exists, its bridge cannot be made
            raise subprocess.CalledProcessError(2, ["ip", *args], stderr=b"forced by the test")
        real_ip(*args, ns=ns)

    monkeypatch.setattr(neutrino.hosts, "_ip", failing_ip)
    with pytest.raises(subprocess.CalledProcessError), open_lab(tmp_path):
        pytest.fail("the lab cannot have been made")
    assert left_by(PREFIXES[-1], tmp_path) == ([], [])


def test_host_failing_after_an_agent_started_undoes_everything(nothing_left_behind: None, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_add = Underlay.add_host
    made: list[str] = []

    def add_host(self: Underlay, name: str) -> Any:
        if name == "h2":
            running = " ".join(_our_processes([tmp_path]))
            assert " server " in running and " agent " in running, "h1's agent and the server run by now"
            made.extend(n for n in _netns() if n.startswith(self.prefix))
            raise RuntimeError("host h2 cannot be made (forced by the test)")
        return real_add(self, name)

    monkeypatch.setattr(Underlay, "add_host", add_host)
    with pytest.raises(RuntimeError, match="forced by the test"), open_lab(tmp_path):
        pytest.fail("the lab cannot have been made")
    assert sorted(made) == [f"{PREFIXES[-1]}-h1", f"{PREFIXES[-1]}-ul", f"{PREFIXES[-1]}-upstream"]
    assert left_by(PREFIXES[-1], tmp_path) == ([], [])


def test_a_taken_host_name_is_refused_and_removes_nothing_of_the_other(nothing_left_behind: None) -> None:
    underlay = Underlay.create()
    PREFIXES.append(underlay.prefix)
    try:
        first = underlay.add_host("h1")
        with pytest.raises(subprocess.CalledProcessError):
            underlay.add_host("h1")
        assert first.namespace in _netns() and first.run(["true"]).returncode == 0
        assert [h.name for h in underlay.hosts] == ["h1"]
    finally:
        underlay.destroy()
    assert not [n for n in _netns() if n.startswith(underlay.prefix)]
