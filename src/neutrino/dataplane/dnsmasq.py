"""The dnsmasq supervisor: one process per served network, configured by files, reloaded by SIGHUP.

Each network has a directory ``<state>/dhcp/<network id>/`` with ``hosts``, ``opts``, ``leases``,
``pid`` and ``argv`` (the part of the command line that depends on intent). A pass writes files that
changed (temp + rename), SIGHUPs a running process whose files changed, starts a missing one, restarts
one only when its command line must change (its subnets, or which ports carry extra_dhcp_opts: see
compile.dhcp), and stops those of networks no longer served.
A process is recognised across agent restarts by its pid file and ``/proc/<pid>/cmdline``.
``ExitWatch`` turns the processes a pass left running into pidfds that become readable when one ends, so
the agent hears of a killed dnsmasq at once instead of at its next pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from neutrino.compile.dhcp import DhcpServerSpec, render_dnsmasq
from neutrino.errors import KernelError

log = logging.getLogger("neutrino.agent")


@dataclass(frozen=True, slots=True)
class DnsmasqState:
    network_id: str
    pid: int | None


def _write(path: Path, text: str) -> bool:
    """Atomically replace ``path`` if its content differs; True when it changed."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)  # dnsmasq reads these after dropping root
    tmp.replace(path)
    return True


class DnsmasqSupervisor:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "dhcp"
        self._pids: dict[str, int] = {}  # network -> the dnsmasq the last ensure() left running

    def pids(self) -> dict[str, int]:
        """The processes this supervisor started or found running, by network, as of its last call."""
        return dict(self._pids)

    def make_traversable(self) -> list[Path]:
        """dnsmasq reads its files after dropping root: every directory above them must be searchable
        (x only; nothing becomes listable or readable that was not). Checked every pass, since something
        else may take the bit away again (pytest resets its base temp directory to 0700 when a session
        starts). Returns the directories it fixed: running dnsmasqs may have failed to read."""
        self.root.mkdir(parents=True, exist_ok=True)
        fixed = []
        for d in [self.root, *self.root.parents]:
            mode = d.stat().st_mode
            if not mode & 0o001:
                os.chmod(d, mode | 0o001)
                fixed.append(d)
        return fixed

    def directory(self, network_id: str) -> Path:
        return self.root / network_id

    def running_pid(self, network_id: str) -> int | None:
        d = self.directory(network_id)
        try:
            pid = int((d / "pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        mine = f"--dhcp-hostsfile={d / 'hosts'}".encode()
        return pid if cmdline and cmdline[0].endswith(b"dnsmasq") and mine in cmdline else None

    def observe(self) -> dict[str, DnsmasqState]:
        if not self.root.exists():
            return {}
        return {d.name: DnsmasqState(d.name, self.running_pid(d.name)) for d in self.root.iterdir() if d.is_dir()}

    def _argv(self, spec: DhcpServerSpec, tail: tuple[str, ...]) -> list[str]:
        d = self.directory(spec.network_id)
        return ["ip", "netns", "exec", spec.namespace, "dnsmasq", "--conf-file=/dev/null", "--no-hosts",
                "--no-resolv", "--port=0", f"--interface={spec.interface}", "--bind-dynamic",
                "--except-interface=lo", "--dhcp-authoritative", "--no-ping",
                f"--dhcp-hostsfile={d / 'hosts'}", f"--dhcp-optsfile={d / 'opts'}",
                f"--dhcp-leasefile={d / 'leases'}", f"--pid-file={d / 'pid'}",
                f"--log-facility={d / 'dnsmasq.log'}", "--dhcp-lease-max=16777216", *tail]

    def ensure(self, spec: DhcpServerSpec, restart: bool = False, reload: bool = False) -> str | None:
        """Make one network's dnsmasq match ``spec``; returns what it did ('started', 'reloaded', ...).
        ``restart``: a running one starts again (its interface was made again: see agent.drivers);
        ``reload``: a running one rereads its files even if they did not change (it may have failed to)."""
        d = self.directory(spec.network_id)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        files = render_dnsmasq(spec)
        changed = _write(d / "hosts", files.hosts) | _write(d / "opts", files.opts)
        argv_changed = _write(d / "argv", "\n".join(files.argv_tail) + "\n")
        (d / "leases").touch(exist_ok=True)
        pid = self.running_pid(spec.network_id)
        if pid is not None and (argv_changed or restart):
            if restart:
                log.info("dnsmasq for network %s: its interface was made again; restarting it", spec.network_id)
            self._kill(pid)
            pid = None
            action = "restarted"
        else:
            action = "started"
        if pid is None:
            if action == "started" and (d / "pid").exists():
                old = (d / "pid").read_text().strip()
                log.warning("dnsmasq for network %s is gone (pid file %s, %s); starting it again",
                            spec.network_id, old, _exit_code(old))
            self._start(spec, files.argv_tail)
            if (started := self.running_pid(spec.network_id)) is not None:
                self._pids[spec.network_id] = started
            return action
        self._pids[spec.network_id] = pid
        if changed or reload:
            os.kill(pid, signal.SIGHUP)
            return "reloaded"
        return None

    def _start(self, spec: DhcpServerSpec, tail: tuple[str, ...]) -> None:
        argv = self._argv(spec, tail)
        # dnsmasq daemonizes; its own session keeps it out of the agent's process group, so stopping or
        # restarting the agent never touches it. Its stdio are files, never pipes: the daemon keeps them,
        # and a pipe whose reader is gone would kill it with SIGPIPE at its next message.
        err_path = self.directory(spec.network_id) / "start.err"
        with open(err_path, "w") as err:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                  start_new_session=True, check=False)
        if proc.returncode != 0:
            raise KernelError(f"dnsmasq failed to start: {err_path.read_text().strip()}", obj=spec.network_id,
                              namespace=spec.namespace)
        deadline = time.monotonic() + 2
        while self.running_pid(spec.network_id) is None:
            if time.monotonic() > deadline:
                raise KernelError("dnsmasq did not write its pid file", obj=spec.network_id,
                                  namespace=spec.namespace)
            time.sleep(0.005)

    @staticmethod
    def _kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or b"zombie" in _status(pid):
                return
            time.sleep(0.005)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def stop(self, network_id: str) -> None:
        self._pids.pop(network_id, None)
        pid = self.running_pid(network_id)
        if pid is not None:
            self._kill(pid)
        shutil.rmtree(self.directory(network_id), ignore_errors=True)


class ExitWatch:
    """Process exits as readable file descriptors (pidfds). dnsmasq daemonizes: it is not the agent's
    child, so no SIGCHLD says when it dies; its pidfd becomes readable when it does."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # pid -> pidfd

    def watch(self, pids: Collection[int]) -> bool:
        """Listen to exactly ``pids`` from now on; True when one of them has already ended."""
        gone = False
        for pid in set(self._fds) - set(pids):
            os.close(self._fds.pop(pid))
        for pid in sorted(set(pids) - set(self._fds)):
            try:
                self._fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                gone = True
        return gone

    def fds(self) -> list[int]:
        return sorted(self._fds.values())

    def drain(self, fd: int) -> bool:
        """True when ``fd``'s process has ended (the fd is then closed and forgotten)."""
        pid = next((p for p, f in self._fds.items() if f == fd), None)
        if pid is None or not select.select([fd], [], [], 0)[0]:
            return False
        os.close(self._fds.pop(pid))
        return True

    def close(self) -> None:
        self.watch(())


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"


def _exit_code(pid: str) -> str:
    """How a dead (zombie) process ended, for the log: exit status or signal."""
    try:
        code = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[-1])
    except (OSError, ValueError, IndexError):
        return "gone"
    return f"killed by signal {code & 0x7F}" if code & 0x7F else f"exited with {code >> 8}"
