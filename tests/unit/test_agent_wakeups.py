"""The agent loop's timing rules, with a fake server and fake drivers (no kernel, no root).

What wakes a pass (the periodic resync, a watch's event, the feed), that a burst of events is one pass,
that a pass's own changes cost at most one confirming pass, and that a failing object backs off however
many events and timers fire meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from neutrino.agent.loop import Agent, AgentSettings, DriverResult, Watch
from neutrino.dataplane.daemons import ExitWatch
from neutrino.errors import KernelError
from neutrino.intent.model import Snapshot
from neutrino.intent.report import AgentReport, PortStatus
from neutrino.intent.source import MAX_WAIT_SECONDS


class FakeSource:
    def __init__(self) -> None:
        self.revision = 1
        self.snapshots = 0
        self.bases: list[int | None] = []  # the revision of the snapshot each fetch named as held
        self.timeouts: list[float] = []
        self._moved = asyncio.Event()

    def move(self) -> None:
        self.revision += 1
        self._moved.set()

    async def report(self, rep: AgentReport) -> str:
        return "agent"

    async def wait(self, after: int, timeout: float, host: str = "") -> int:
        self.timeouts.append(timeout)
        deadline = time.monotonic() + timeout
        while self.revision <= after and time.monotonic() < deadline:
            self._moved.clear()
            try:
                await asyncio.wait_for(self._moved.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return self.revision

    async def snapshot(self, host: str, base: Snapshot | None = None) -> Snapshot:
        self.snapshots += 1
        self.bases.append(base.revision if base is not None else None)
        return Snapshot(revision=self.revision)

    async def port_status(self, status: PortStatus) -> int:
        return 0

    async def aclose(self) -> None:
        return None


class PipeWatch:
    """A watch whose 'kernel' is a pipe: ``poke()`` is an event about one of the driver's objects."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def poke(self) -> None:
        os.write(self.w, b"x")

    def rearm(self) -> bool:
        return False

    def fds(self) -> list[int]:
        return [self.r]

    def drain(self, fd: int) -> bool:
        try:
            return bool(os.read(fd, 4096))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class FakeDriver:
    """Changes ``changes_left`` things (one per pass), each heard back as an event, as the kernel would
    report the agent's own changes; ``fail`` raises like an object the kernel refuses (EINVAL)."""
    name = "fake"

    def __init__(self, changes_left: int = 0, fail: bool = False) -> None:
        self.pipe = PipeWatch()
        self.changes_left = changes_left
        self.fail = fail
        self.passes = 0
        self.fulls: list[tuple[int, bool]] = []  # each pass: its revision, full or quiet (Driver.reconcile)

    def watch(self) -> Watch:
        return self.pipe

    def reconcile(self, snap: Snapshot, full: bool = True) -> DriverResult:
        self.passes += 1
        self.fulls.append((snap.revision, full))
        if self.fail:
            raise KernelError("set link failed: (22, 'Invalid argument')", obj="brq0", errno=errno.EINVAL)
        if self.changes_left:
            self.changes_left -= 1
            self.pipe.poke()
            return DriverResult(changes=1)
        return DriverResult()


def settings(tmp_path: Path, resync: float) -> AgentSettings:
    return AgentSettings(host="h1", tunnel_ip="192.0.2.1", interface_mappings={}, state_dir=tmp_path,
                         heartbeat_seconds=60.0, resync_seconds=resync)


async def running(agent: Agent, body: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def until(what: str, check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_long_polls_never_ask_for_more_than_servers_hold(tmp_path: Path) -> None:
    source, driver = FakeSource(), FakeDriver()
    agent = Agent(source, settings(tmp_path, 60.0), [driver])  # heartbeat 60 s: above what a server holds

    async def body() -> None:
        await until("a long poll", lambda: bool(source.timeouts))

    asyncio.run(running(agent, body))
    assert source.timeouts and max(source.timeouts) == MAX_WAIT_SECONDS


def test_resync_runs_full_passes_on_the_last_snapshot(tmp_path: Path) -> None:
    source, driver = FakeSource(), FakeDriver()
    agent = Agent(source, settings(tmp_path, 0.05), [driver])

    async def body() -> None:
        await until("four resync passes", lambda: agent.reasons["resync"] >= 4)

    asyncio.run(running(agent, body))
    assert source.snapshots == 1  # the intent did not move: the snapshot is reused
    assert driver.passes == agent.passes >= 5


def test_new_intent_is_fetched_at_once(tmp_path: Path) -> None:
    source, driver = FakeSource(), FakeDriver()
    agent = Agent(source, settings(tmp_path, 60.0), [driver])

    async def body() -> None:
        await until("the first pass", lambda: agent.passes == 1)
        source.move()
        await until("a pass at the new revision", lambda: agent.revision == 2)

    asyncio.run(running(agent, body))
    assert source.snapshots == 2 and agent.reasons["intent"] == 1
    assert source.bases == [None, 1]  # the first whole; new intent asked as a change to the one held


def test_a_fetch_a_heartbeat_after_the_last_whole_one_is_whole_again(tmp_path: Path) -> None:
    source, driver = FakeSource(), FakeDriver()
    agent = Agent(source, dataclasses.replace(settings(tmp_path, 0.1), heartbeat_seconds=0.4), [driver])

    async def body() -> None:
        await until("the first pass", lambda: agent.passes == 1)
        source.move()
        await until("a pass at revision 2", lambda: agent.revision == 2)
        await until("the heartbeat's fetch", lambda: source.snapshots >= 3)
        source.move()
        await until("a pass at revision 3", lambda: agent.revision == 3)

    asyncio.run(running(agent, body))
    assert source.bases[:2] == [None, 1] and None in source.bases[2:]
    assert source.bases[-1] in (None, 2)


def test_only_a_pass_for_new_intent_with_nothing_heard_from_the_kernel_is_quiet(tmp_path: Path) -> None:
    source, driver = FakeSource(), FakeDriver()
    agent = Agent(source, settings(tmp_path, 0.3), [driver])

    def at(revision: int) -> list[bool]:
        return [full for rev, full in driver.fulls if rev == revision]

    async def body() -> None:
        await until("the first pass", lambda: agent.passes == 1)
        source.move()
        await until("a resync at the new revision", lambda: len(at(2)) >= 2)
        assert at(1)[0] is True and at(2)[:2] == [False, True]  # the start; the intent alone; the timer
        seen = len(driver.fulls)
        driver.pipe.poke()  # heard from the kernel, and new intent at once
        source.move()
        await until("a pass at the newer revision", lambda: bool(at(3)))
        assert driver.fulls[seen][1] is True, driver.fulls  # the pass after the event is full, whatever woke it

    asyncio.run(running(agent, body))


def test_a_burst_of_events_is_one_pass_and_quiet_after(tmp_path: Path) -> None:
    source, driver = FakeSource(), FakeDriver()
    agent = Agent(source, settings(tmp_path, 60.0), [driver])

    async def body() -> None:
        await until("the first pass", lambda: agent.passes == 1)
        for _ in range(20):
            driver.pipe.poke()
        await until("a pass for the events", lambda: agent.reasons["event"] == 1)
        await asyncio.sleep(0.5)  # nothing may follow a pass that changed nothing

    asyncio.run(running(agent, body))
    assert agent.passes == 2 and agent.reasons["event"] == 1


def test_a_pass_hearing_its_own_changes_confirms_once(tmp_path: Path) -> None:
    source, driver = FakeSource(), FakeDriver(changes_left=1)
    agent = Agent(source, settings(tmp_path, 60.0), [driver])

    async def body() -> None:
        await until("the confirming pass", lambda: agent.passes == 2)
        await asyncio.sleep(0.5)

    asyncio.run(running(agent, body))
    assert agent.passes == 2 and agent.reasons["event"] == 1 and driver.changes_left == 0


def test_an_object_that_never_stays_as_applied_slows_down_to_the_resync(tmp_path: Path) -> None:
    """Every pass changes something and hears it (the kernel keeps undoing it): after the confirming pass,
    event-woken passes come 0.2, 0.4, 0.8 s apart, then one per resync interval; never a loop."""
    source, driver = FakeSource(), FakeDriver(changes_left=10_000)
    agent = Agent(source, settings(tmp_path, 1.0), [driver])

    async def body() -> None:
        await asyncio.sleep(2.5)

    asyncio.run(running(agent, body))
    # about 0, .02, .04, .24, .64, 1.44, 2.44 s: 7 passes (a loop would be ~100)
    assert 4 <= driver.passes <= 9, driver.passes
    assert agent.churn >= 4


def test_events_that_never_stop_are_rate_limited(tmp_path: Path) -> None:
    """Something outside flaps one of our links every 5 ms: passes change nothing, yet the events keep
    coming; after a burst of 3, at most one pass per 0.1 s."""
    source, driver = FakeSource(), FakeDriver()
    agent = Agent(source, settings(tmp_path, 60.0), [driver])

    async def body() -> None:
        await until("the first pass", lambda: agent.passes == 1)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            driver.pipe.poke()
            await asyncio.sleep(0.005)

    asyncio.run(running(agent, body))
    assert 5 <= agent.reasons["event"] <= 3 + 16, agent.reasons


def test_a_failing_object_backs_off_whatever_wakes_the_agent(tmp_path: Path) -> None:
    """EINVAL on every pass, events every 10 ms, a resync timer of 20 ms and new intent: the passes still
    follow the backoff (0.2, 0.4, 0.8 s, ...), they never spin."""
    source, driver = FakeSource(), FakeDriver(fail=True)
    agent = Agent(source, settings(tmp_path, 0.02), [driver])

    async def body() -> None:
        end = time.monotonic() + 1.3
        while time.monotonic() < end:
            driver.pipe.poke()
            source.move()
            await asyncio.sleep(0.01)

    asyncio.run(running(agent, body))
    # passes at about 0, 0.2, 0.6 (and 1.4) s
    assert 2 <= driver.passes <= 4, driver.passes
    assert agent.last_error and "Invalid argument" in agent.last_error


def test_exit_watch_hears_a_process_end(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    other = subprocess.Popen(["sleep", "30"])
    watch = ExitWatch()
    try:
        assert watch.watch([proc.pid, other.pid]) is False
        fds = watch.fds()
        assert len(fds) == 2 and not any(watch.drain(fd) for fd in fds)
        proc.kill()
        proc.wait()
        assert [fd for fd in fds if watch.drain(fd)] and len(watch.fds()) == 1
        assert watch.watch([proc.pid]) is True  # gone before it could be watched
        assert watch.fds() == []
    finally:
        watch.close()
        other.kill()
        other.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="creates links (root)")
def test_link_monitor_reports_only_matching_links() -> None:
    ns = f"ntwake{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        script = ("import sys, subprocess\nfrom neutrino.dataplane.netlink import LinkMonitor\n"
                  "m = LinkMonitor(('brq',))\n"
                  "for cmd in ('link add xq0 type bridge', 'link add brqtest type bridge', 'link del brqtest'):\n"
                  "    subprocess.run(['ip', *cmd.split()], check=True)\n"
                  "print([(e.name, e.gone) for e in m.drain()], m.drain())\n")
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True,
                              text=True, check=True)
        assert done.stdout.strip() == "[('brqtest', False), ('brqtest', True)] []"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
