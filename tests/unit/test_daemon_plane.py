"""The daemon supervisor against a fake process table (real files in a temporary directory)."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

from neutrino.compile.daemons import DaemonSpec
from neutrino.compile.l2 import compile_host
from neutrino.compile.state import HostState
from neutrino.dataplane import daemons as dm
from tests.unit.fakes import FakeProcesses
from tests.unit.test_compile import N1, snapshot


def desired() -> HostState:
    return compile_host(snapshot(), "h1", "198.18.0.1", {"physnet1": "eth1"})


def supervisor(tmp_path: Path, procs: FakeProcesses, owner: str = "me") -> dm.Supervisor:
    return dm.Supervisor(tmp_path / "run" / owner, procs, pointer=tmp_path / "state" / "dhcp")


def with_daemon(state: HostState, spec: DaemonSpec) -> HostState:
    return dataclasses.replace(state, daemons=(spec,))


def test_starts_then_stays_still(tmp_path: Path) -> None:
    procs, want = FakeProcesses(), desired()
    sup = supervisor(tmp_path, procs)
    result = sup.sync(want)
    [spec] = want.daemons
    d = tmp_path / "run" / "me" / "dnsmasq" / N1
    assert result.changes == 2 and result.ready == {spec.ports[0]}
    assert (d / "hosts").read_text() == spec.file("hosts") and (d / "leases").exists()
    assert (d / "hosts").stat().st_mode & 0o777 == 0o644 and d.stat().st_mode & 0o777 == 0o755
    assert procs.started == [("ip", "netns", "exec", f"qdhcp-{N1}", *sup.expand(spec))]
    assert f"--dhcp-hostsfile={d}/hosts" in procs.started[0]
    assert (tmp_path / "state" / "dhcp").resolve() == d.parent  # the pointer for people
    assert sup.diff(want, sup.observe(want)) == []
    again = dm.Supervisor(tmp_path / "run" / "me", procs)  # a restarted agent finds it by pid file + cmdline
    assert again.sync(want).changes == 0 and again.pids() == sup.pids()
    assert len(procs.started) == 1 and procs.signals == []


def test_file_change_reloads_argv_change_restarts(tmp_path: Path) -> None:
    procs, want = FakeProcesses(), desired()
    sup = supervisor(tmp_path, procs)
    sup.sync(want)
    [spec] = want.daemons
    [pid] = sup.pids().values()
    sup.sync(with_daemon(want, dataclasses.replace(spec, files=(("hosts", "x\n"), ("opts", spec.file("opts"))))))
    assert procs.signals == [(pid, signal.SIGHUP)] and list(sup.pids().values()) == [pid]
    sup.sync(with_daemon(want, dataclasses.replace(spec, argv=(*spec.argv, "--dhcp-range=x"))))
    [new] = sup.pids().values()
    assert new != pid and pid not in procs.table
    no_signal = dataclasses.replace(spec, argv=(*spec.argv, "--dhcp-range=x"), reload_signal=None,
                                    files=(("hosts", "y\n"), ("opts", "")))
    sup.sync(with_daemon(want, no_signal))
    assert new not in procs.table  # a kind without a reload signal restarts on a file change


def test_gone_process_is_started_and_remade_link_restarts(tmp_path: Path) -> None:
    procs, want = FakeProcesses(), desired()
    sup = supervisor(tmp_path, procs)
    sup.sync(want)
    [spec] = want.daemons
    [pid] = sup.pids().values()
    procs.kill(pid)  # killed behind our back
    assert sup.sync(want).changes == 1
    [second] = sup.pids().values()
    assert second != pid
    sup.sync(want, frozenset({(spec.namespace, spec.binds[0])}))  # its interface was made again
    [third] = sup.pids().values()
    assert third != second and second not in procs.table


def test_sweeps_its_own_dirs_only(tmp_path: Path) -> None:
    procs, want = FakeProcesses(), desired()
    mine, theirs = supervisor(tmp_path, procs), supervisor(tmp_path, procs, owner="other")
    mine.sync(want)
    theirs.sync(want)
    mine.sync(HostState())
    assert not (tmp_path / "run" / "me" / "dnsmasq" / N1).exists() and mine.pids() == {}
    assert next(iter(theirs.pids().values())) in procs.table
    assert theirs.diff(want, theirs.observe(want)) == []


def test_lost_search_bit_is_fixed_and_daemons_reread(tmp_path: Path) -> None:
    procs, want = FakeProcesses(), desired()
    sup = supervisor(tmp_path, procs)
    sup.sync(want)
    [pid] = sup.pids().values()
    kind_dir = tmp_path / "run" / "me" / "dnsmasq"
    kind_dir.chmod(0o700)
    assert sup.sync(want).changes == 2
    assert kind_dir.stat().st_mode & 0o777 == 0o755 and procs.signals == [(pid, signal.SIGHUP)]


def test_an_empty_host_leaves_nothing_in_run(tmp_path: Path) -> None:
    """Cleanup (the empty HostState) stops the daemons and removes this owner's run directory; another
    owner's stays."""
    procs = FakeProcesses()
    mine, other = supervisor(tmp_path, procs), supervisor(tmp_path, procs, owner="other")
    mine.sync(desired())
    other.sync(desired())
    mine.sync(HostState())
    assert not (tmp_path / "run" / "me").exists()
    assert (tmp_path / "run" / "other" / "dnsmasq" / N1 / "hosts").exists()
