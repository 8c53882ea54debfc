"""nftables in-process: libnftables (the library the ``nft`` tool is built on) through ctypes, no fork.

The nft plane asks for a listing of every table it set on every pass and, on a full pass, for the tables of
every namespace it works in; a router is a namespace of its own, so at 1,000 routers ``ip netns exec ...
nft`` forked 1,000 to 3,000 times a pass (~10 ms each). Here each call steps this thread into the
namespace (setns, as dataplane/netlink.py does for its sockets), makes a libnftables context there (its
netlink socket is born in that namespace), runs the command and steps back out: ~0.1-0.5 ms. The scripts
and listings are the ``nft`` tool's own, byte for byte (the same parser and printer): what the plane
remembers across restarts stays comparable.

``LibNft`` implements the plane's ``Nft`` protocol; ``available()`` says whether the library can be loaded
(else the plane forks ``nft``, dataplane/nft.py ``NftCommand``).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

from neutrino.dataplane import netlink as nl
from neutrino.errors import KernelError

T = TypeVar("T")
LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.restype = None
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).restype = ctypes.c_int
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).restype = ctypes.c_char_p
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _lib = lib
        return _lib


def available() -> bool:
    try:
        _load()
    except OSError:
        return False
    return True


def _in(ns: str | None, fn: Callable[[], T]) -> T:
    return fn() if ns is None else nl._socket_in(ns, fn)


def run_command(ns: str | None, script: str) -> tuple[int, str, str]:
    """Run ``script`` (nft syntax, any number of commands: one transaction) inside ``ns``: (return code,
    output, error output), as ``nft -f -`` would give them."""
    lib = _load()

    def call() -> tuple[int, str, str]:
        ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise KernelError("libnftables: cannot make a context", namespace=ns or "")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            return rc, out, err
        finally:
            lib.nft_ctx_free(ctx)

    try:
        return _in(ns, call)
    except OSError as exc:  # the namespace is gone (or never was)
        return 1, "", f"cannot enter namespace: {exc.strerror}"


class LibNft:
    """The nft plane's ``Nft``, in-process."""

    def run(self, ns: str | None, script: str) -> None:
        rc, _, err = run_command(ns, script)
        if rc != 0:
            raise KernelError(f"nft failed: {err.strip()}", namespace=ns or "")

    def listing(self, ns: str | None, family: str, name: str) -> str | None:
        rc, out, _ = run_command(ns, f"list table {family} {name}")
        return out if rc == 0 else None

    def generation(self, ns: str | None) -> int | None:
        """The namespace's nftables generation, as the plane reads it (netlink, dataplane/nft.py)."""
        from neutrino.dataplane import nft  # the plane's module imports this one

        read = getattr(nft, "generation", None)
        return read(ns) if read is not None else None

    def tables(self, ns: str | None) -> set[tuple[str, str]]:
        rc, out, err = run_command(ns, "list tables")
        if rc != 0:
            raise KernelError(f"nft list tables failed: {err.strip()}", namespace=ns or "")
        return {(w[1], w[2]) for w in (line.split() for line in out.splitlines())
                if len(w) == 3 and w[0] == "table"}
