"""Ownership marks: which links and namespaces are this neutrino's."""

from __future__ import annotations

from pathlib import Path

from neutrino.dataplane import ownership as own


def test_owner_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = own.owner_id(tmp_path)
    assert first and first == own.owner_id(tmp_path)
    assert (tmp_path / "owner-id").read_text().strip() == first
    assert own.owner_id(tmp_path / "other") != first


def test_mark_names_owner_and_creator() -> None:
    alias = own.mark("abc", own.Creator.AGENT)
    assert own.owned_by(alias, "abc")
    assert own.owned_by(alias, "abc", own.Creator.AGENT)
    assert not own.owned_by(alias, "abc", own.Creator.LAB)
    assert not own.owned_by(alias, "xyz")
    assert own.parse(alias) == ("abc", "agent")


def test_foreign_aliases_are_not_ours() -> None:
    for alias in (None, "", "uplink to rack 3", "neutrino::agent", "neutrino:abc", "neutrino:abc:agent:x"):
        assert not own.owned_by(alias, "abc")


def test_prefix_table() -> None:
    assert own.prefixes(own.Creator.AGENT, own.Scope.HOST) == ("brq", "tap", "vxlan-")
    assert own.prefixes(own.Creator.AGENT, own.Scope.NETNS) == ("qdhcp-", "qrouter-")
    assert own.prefixes(own.Creator.LAB, own.Scope.HOST) == ("tap",)


def test_namespace_records(tmp_path: Path) -> None:
    rec = own.NamespaceRecords(tmp_path)
    assert rec.names() == set()
    rec.add("qdhcp-1")
    rec.add("qdhcp-2")
    rec.remove("qdhcp-1")
    rec.remove("qdhcp-9")
    assert rec.names() == {"qdhcp-2"}
