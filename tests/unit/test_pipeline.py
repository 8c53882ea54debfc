"""The pipeline: planes in order, one failing plane does not stop the others, ready is an intersection,
and the agent's revision does not advance past a failed pass. Also the nft plane's rendering and
full-sync rules, with a fake nft."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from pathlib import Path

import pytest

from neutrino.agent.loop import Agent
from neutrino.agent.pipeline import Pipeline
from neutrino.compile.nft import NftTable, render_sync
from neutrino.compile.state import HostState, PlugSpec
from neutrino.dataplane.nft import NftPlane
from neutrino.dataplane.plane import Made, PlaneResult
from neutrino.errors import KernelError
from neutrino.intent.model import PortId
from tests.unit.test_agent_wakeups import FakeSource, settings

A, B = PortId("a"), PortId("b")


@dataclasses.dataclass
class FakePlane:
    name: str
    named: frozenset[PortId]
    ready: frozenset[PortId]
    fail: bool = False
    runs: int = 0
    leaf: bool = False
    acts_on: str = "plugs"  # the field of HostState that is its part

    def names(self, desired: HostState) -> Collection[PortId]:
        return self.named

    def part(self, desired: HostState) -> object:
        return getattr(desired, self.acts_on)

    def sync(self, desired: HostState, made: Made) -> PlaneResult:
        self.runs += 1
        if self.fail:
            raise KernelError("injected")
        return PlaneResult(1, self.ready)


def test_one_failing_plane_does_not_stop_the_others_and_ready_is_an_intersection(tmp_path: Path) -> None:
    links = FakePlane("links", frozenset({A, B}), frozenset({A, B}))
    nft = FakePlane("nft", frozenset({B}), frozenset())  # B's filter is not in place: B is not ready
    daemons = FakePlane("daemons", frozenset({A}), frozenset({A}), fail=True)
    pipe = Pipeline(settings(tmp_path, 1.0), [links, nft, daemons])
    result = pipe.run(HostState())
    assert (links.runs, nft.runs, daemons.runs) == (1, 1, 1)
    assert result.wired == frozenset() and result.changes == 2 and result.errors == ("daemons: injected",)
    daemons.fail = False
    assert pipe.run(HostState()).wired == {A}


def test_a_quiet_pass_looks_only_at_planes_whose_part_moved_or_whose_inputs_changed(tmp_path: Path) -> None:
    """New intent and nothing heard from the kernel (``full`` False): a plane whose part of the desired
    state is what its last clean sync made, with no plane before it having changed something it depends
    on, is not synced again and its ports stay as ready as it last found them. Full passes sync all."""
    nft = FakePlane("nft", frozenset({A}), frozenset({A}), leaf=True, acts_on="nft")
    links = FakePlane("links", frozenset({A, B}), frozenset({A, B}), acts_on="plugs")
    daemons = FakePlane("daemons", frozenset({B}), frozenset({B}), leaf=True, acts_on="problems")
    pipe = Pipeline(settings(tmp_path, 1.0), [nft, links, daemons])
    first = HostState(plugs=(PlugSpec(A, "tapA", "brq1", 1450),))
    assert pipe.run(first, full=False).wired == {A, B}  # nothing kept yet: every plane
    assert (nft.runs, links.runs, daemons.runs) == (1, 1, 1)
    # Only the filter moved (a remote group's new member): the nft plane alone, and it is a leaf.
    filtered = dataclasses.replace(first, nft=(NftTable(None, "inet", BODY, (A,)),))
    result = pipe.run(filtered, full=False)
    assert (nft.runs, links.runs, daemons.runs) == (2, 1, 1) and result.wired == {A, B} and result.skipped == 2
    # The links moved: they changed something, so the daemons after them look again, though theirs did not.
    plugged = dataclasses.replace(filtered, plugs=(*filtered.plugs, PlugSpec(B, "tapB", "brq1", 1450)))
    assert pipe.run(plugged, full=False).skipped == 1 and (nft.runs, links.runs, daemons.runs) == (2, 2, 2)
    # A full pass (the resync timer, a kernel event) syncs every plane whatever moved.
    assert pipe.run(plugged).skipped == 0 and (nft.runs, links.runs, daemons.runs) == (3, 3, 3)
    # A plane that failed is synced again in the next pass, quiet or not.
    links.fail = True
    assert pipe.run(plugged).wired == frozenset()
    links.fail = False
    assert pipe.run(plugged, full=False).wired == {A, B} and links.runs == 5 and daemons.runs == 5
    assert nft.runs == 4  # its part and its inputs unchanged since its clean sync in the failed pass


def test_a_failing_plane_keeps_the_revision(tmp_path: Path) -> None:
    source = FakeSource()
    bad = FakePlane("daemons", frozenset(), frozenset(), fail=True)
    good = FakePlane("links", frozenset(), frozenset())
    agent = Agent(source, settings(tmp_path, 1.0), [Pipeline(settings(tmp_path, 1.0), [good, bad])])
    with pytest.raises(RuntimeError, match="daemons: injected"):
        asyncio.run(agent.run_once())
    assert good.runs == 1 and agent.revision == 0 and not (tmp_path / "agent-revision").exists()
    bad.fail = False
    asyncio.run(agent.run_once())
    assert agent.revision == source.revision


class FakeNft:
    """nft, per namespace: tables by (ns, family, name) -> content."""

    def __init__(self) -> None:
        self.store: dict[tuple[str | None, str, str], str] = {}
        self.scripts: list[str] = []
        self.fail = False

    def run(self, ns: str | None, script: str) -> None:
        if self.fail:
            raise KernelError("nft failed")
        for line in script.splitlines():  # one transaction: creating a table that exists applies nothing
            words = line.split()
            if words[:2] == ["create", "table"] and (ns, words[2], words[3]) in self.store:
                raise KernelError("nft failed: Error: Could not process rule: File exists")
        self.scripts.append(script)
        for line in script.splitlines():
            words = line.split()
            if words[:2] == ["delete", "table"]:
                self.store.pop((ns, words[2], words[3]), None)
            elif words[:1] == ["table"] and line.endswith("{"):
                self.store[(ns, words[1], words[2])] = script.split("{", 1)[1]

    def listing(self, ns: str | None, family: str, name: str) -> str | None:
        return self.store.get((ns, family, name))

    def tables(self, ns: str | None) -> set[tuple[str, str]]:
        return {(f, n) for (s, f, n) in self.store if s == ns}

    def generation(self, ns: str | None) -> int | None:
        return None  # unknown: the plane lists its tables to see changes


BODY = "chain forward {\n\ttype filter hook forward priority 0; policy accept;\n}\n"


def test_render_sync_is_one_atomic_replacement() -> None:
    script = render_sync(NftTable("qrouter-1", "inet", BODY), "abc")
    assert script.splitlines()[:3] == ["table inet neutrino-abc", "delete table inet neutrino-abc",
                                       "table inet neutrino-abc {"]
    assert "\tchain forward {" in script and script.endswith("}\n")
    with pytest.raises(ValueError):
        render_sync(NftTable(None, "arp", BODY), "abc")


def test_nft_plane_full_sync_after_failure_drift_and_sweep() -> None:
    nft = FakeNft()
    nft.store[(None, "inet", "neutrino-other")] = "theirs"
    nft.store[(None, "inet", "neutrino-me")] = "left from before a restart"
    plane = NftPlane("me", nft)
    table = NftTable("ns1", "inet", BODY, (A,))
    want = dataclasses.replace(HostState(), nft=(table,))
    assert plane.names(want) == {A}
    result = plane.sync(want)
    assert result.ready == {A} and (None, "inet", "neutrino-me") not in nft.store
    assert (None, "inet", "neutrino-other") in nft.store
    n = len(nft.scripts)
    assert plane.sync(want).changes == 0 and len(nft.scripts) == n  # nothing to do: no transaction
    nft.store[("ns1", "inet", "neutrino-me")] = "edited by hand"
    assert plane.sync(want).changes == 1 and nft.store[("ns1", "inet", "neutrino-me")] != "edited by hand"
    nft.fail = True
    with pytest.raises(KernelError):
        changed = dataclasses.replace(table, body=BODY + "set s { type ipv4_addr; }\n")
        plane.sync(dataclasses.replace(want, nft=(changed,)))
    assert plane.full
    nft.fail = False
    plane.sync(want)
    assert not plane.full and nft.scripts[-1].startswith("table inet neutrino-me\ndelete table")
    plane.sync(HostState())
    assert ("ns1", "inet", "neutrino-me") not in nft.store


def test_nft_plane_creates_tables_it_saw_absent_and_replaces_those_it_saw() -> None:
    """Replacing means deleting, which costs the kernel an RCU grace period per table (~12 ms): a table
    seen not to exist is created instead, in a transaction that fails should it exist after all."""
    nft = FakeNft()
    plane = NftPlane("me", nft)
    t1, t2 = NftTable("ns1", "ip", BODY, (A,)), NftTable("ns2", "ip", BODY)
    plane.sync(dataclasses.replace(HostState(), nft=(t1,)))  # first (full) pass, nothing there
    assert nft.scripts[-1].startswith("create table ip neutrino-me\ntable ip neutrino-me {")
    assert "delete" not in nft.scripts[-1]
    plane.sync(dataclasses.replace(HostState(), nft=(t1, t2)))  # a new table in a later pass
    assert nft.scripts[-1].startswith("create table ip neutrino-me\n") and len(nft.scripts) == 2
    del nft.store[("ns1", "ip", "neutrino-me")]  # gone behind the agent's back: made again
    plane.sync(dataclasses.replace(HostState(), nft=(t1, t2)))
    assert nft.scripts[-1].startswith("create table") and ("ns1", "ip", "neutrino-me") in nft.store
    nft.store[("ns1", "ip", "neutrino-me")] = "edited by hand"  # there, but not as set: replaced
    plane.sync(dataclasses.replace(HostState(), nft=(t1, t2)))
    assert nft.scripts[-1].startswith("table ip neutrino-me\ndelete table ip neutrino-me\n")

    class Racing(FakeNft):
        """While ``hide``: lists nothing, but the table exists (made between the look and the change)."""
        hide = True

        def listing(self, ns: str | None, family: str, name: str) -> str | None:
            return None if self.hide else super().listing(ns, family, name)

        def tables(self, ns: str | None) -> set[tuple[str, str]]:
            return set() if self.hide else super().tables(ns)

    racing = Racing()
    racing.store[("ns1", "ip", "neutrino-me")] = "made meanwhile"
    plane = NftPlane("me", racing)
    with pytest.raises(KernelError, match="File exists"):
        plane.sync(dataclasses.replace(HostState(), nft=(t1,)))
    assert racing.store[("ns1", "ip", "neutrino-me")] == "made meanwhile" and plane.full
    racing.hide = False  # the full pass after it sees the table
    plane.sync(dataclasses.replace(HostState(), nft=(t1,)))
    assert racing.scripts[-1].startswith("table ip neutrino-me\ndelete table") and \
        racing.store[("ns1", "ip", "neutrino-me")] != "made meanwhile"


def test_nft_plane_restarted_with_memory_reapplies_nothing_unless_the_table_changed(tmp_path: Path) -> None:
    nft = FakeNft()
    memory = tmp_path / "nft-tables.json"
    want = dataclasses.replace(HostState(), nft=(NftTable("ns1", "ip", BODY, (A,)),))
    assert NftPlane("me", nft, memory).sync(want).ready == {A}
    n = len(nft.scripts)
    again = NftPlane("me", nft, memory)  # a restarted agent
    result = again.sync(want)
    assert result.changes == 0 and result.ready == {A} and len(nft.scripts) == n  # no transaction at all
    nft.store[("ns1", "ip", "neutrino-me")] = "edited while the agent was down"
    NftPlane("me", nft, memory).sync(want)
    assert len(nft.scripts) == n + 1 and nft.store[("ns1", "ip", "neutrino-me")] != "edited while the agent was down"
    changed = dataclasses.replace(want, nft=(NftTable("ns1", "ip", BODY + "set s { type ipv4_addr; }\n", (A,)),))
    NftPlane("me", nft, memory).sync(changed)
    assert len(nft.scripts) == n + 2  # a new body is set, whatever the memory says
