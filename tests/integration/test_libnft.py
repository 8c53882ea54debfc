"""libnftables in-process (dataplane/libnft.py) against the ``nft`` tool, on the real kernel, in throwaway
namespaces: the same table lists byte for byte either way (the nft plane's memory of a table written by one
is read back by the other), the table lands in the namespace asked for and nowhere else, an error is a
KernelError carrying nft's message with nothing applied, a missing table lists as None, a namespace that is
gone is an error, and no process is started for any of it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from neutrino.compile.nft import NftTable, render_sync
from neutrino.dataplane import libnft
from neutrino.dataplane.nft import NftCommand, NftPlane
from neutrino.errors import KernelError
from tests.integration.conftest import PREFIXES

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, nft)"),
              pytest.mark.skipif(not libnft.available(), reason="libnftables not installed")]

BODY = """chain prerouting {
\ttype nat hook prerouting priority dstnat; policy accept;
\tip daddr 172.24.4.9 dnat to 10.0.0.5
}
chain postrouting {
\ttype nat hook postrouting priority srcnat; policy accept;
\toifname "qg-1" ip saddr 10.0.0.5 snat to 172.24.4.9
\toifname "qg-1" ip saddr { 10.0.0.0/24, 10.1.0.0/24 } snat to 172.24.4.5
}
"""


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    prefix = f"nt{uuid.uuid4().hex[:6]}"
    PREFIXES.append(prefix)
    names = [f"{prefix}-a", f"{prefix}-b"]
    for ns in names:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_same_listing_as_the_tool_in_the_namespace_asked_for(namespaces: list[str]) -> None:
    a, b = namespaces
    lib, tool = libnft.LibNft(), NftCommand()
    lib.run(a, render_sync(NftTable(a, "ip", BODY), "t1"))
    listing = lib.listing(a, "ip", "neutrino-t1")
    assert listing is not None and 'snat to 172.24.4.5' in listing
    assert listing == tool.listing(a, "ip", "neutrino-t1")
    assert lib.tables(a) == tool.tables(a) == {("ip", "neutrino-t1")}
    assert lib.tables(b) == set() and lib.listing(b, "ip", "neutrino-t1") is None
    assert ("ip", "neutrino-t1") not in lib.tables(None)  # not in the test's own namespace either
    # Written by the tool, read by the library.
    tool.run(b, render_sync(NftTable(b, "ip", BODY), "t2"))
    assert lib.listing(b, "ip", "neutrino-t2") == tool.listing(b, "ip", "neutrino-t2")


def test_errors_apply_nothing(namespaces: list[str]) -> None:
    a, _ = namespaces
    lib = libnft.LibNft()
    lib.run(a, render_sync(NftTable(a, "ip", BODY), "t1"))
    before = lib.listing(a, "ip", "neutrino-t1")
    with pytest.raises(KernelError, match="nft failed: Error: Could not process rule"):
        lib.run(a, "delete table ip neutrino-t1\nadd rule ip neutrino-t1 nochain accept\n")
    assert lib.listing(a, "ip", "neutrino-t1") == before  # one transaction: the delete did not happen
    with pytest.raises(KernelError, match="cannot enter namespace"):
        lib.run(f"{a}-gone", "list tables")
    assert lib.listing(f"{a}-gone", "ip", "neutrino-t1") is None


def test_no_process_is_started(namespaces: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = namespaces
    lib = libnft.LibNft()

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    lib.run(a, render_sync(NftTable(a, "ip", BODY), "t1"))
    assert lib.listing(a, "ip", "neutrino-t1") is not None and lib.tables(a) == {("ip", "neutrino-t1")}


def test_the_plane_uses_it_by_default(namespaces: list[str]) -> None:
    assert isinstance(NftPlane("x").nft, libnft.LibNft)
