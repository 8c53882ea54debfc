"""The daemon plane: a generic supervisor for the daemons HostState names (dnsmasq now; keepalived, haproxy,
charon later), each a ``DaemonSpec`` rendered by compile/.

Where: every (kind, key) has its own directory ``<root>/<owner>/<kind>/<key>/`` (``root`` is
``/run/neutrino``: root-owned, 0755 all the way down, made by neutrino). Daemons that drop privileges
(dnsmasq runs as ``nobody``) can reach their files there whatever the mode of the state directory and the
directories above it, so neutrino never changes the mode of a directory it did not make. The modes of the
directories it did make are checked every pass; one that lost its x bit is fixed and the running daemons
reread their files. ``<state>/agent/dhcp`` is a symlink to the dnsmasq directories, for people.

How: files are written atomically (temp + rename, 0644) when their bytes differ; a process is recognised
across agent restarts by its pid file and its ``/proc/<pid>/cmdline`` (the daemon's argv, which names its
directory); it runs in its own session (stopping the agent never touches it). A changed argv restarts it,
changed files are the kind's reload (a signal, or a restart), a link it binds to made anew restarts it,
and directories of (kind, key) no longer desired are swept: their process stopped, the directory removed.
``ExitWatch`` turns the processes left running into pidfds that become readable when one ends.
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
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from neutrino.compile.daemons import DIR, DaemonSpec
from neutrino.compile.state import HostState
from neutrino.dataplane.plane import Made, PlaneResult
from neutrino.errors import KernelError
from neutrino.intent.model import PortId

log = logging.getLogger("neutrino.agent")
RUN_ROOT = Path("/run/neutrino")
Key = tuple[str, str]  # (kind, key)


class Processes(Protocol):
    """The process table, as the supervisor sees it (a fake one in unit tests)."""

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        """A live process's argv; None when there is none (or only a zombie)."""
        ...

    def start(self, argv: Sequence[str], log_path: Path) -> str | None:
        """Run a daemonizing command in its own session; None on success, else what it said."""
        ...

    def kill(self, pid: int) -> None:
        """SIGTERM, wait a little, SIGKILL."""
        ...

    def signal(self, pid: int, sig: int) -> None: ...


class RealProcesses:
    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return tuple(a.decode(errors="replace") for a in raw.split(b"\0")[:-1]) or None

    def start(self, argv: Sequence[str], log_path: Path) -> str | None:
        # Its stdio are files, never pipes: the daemon keeps them, and a pipe whose reader is gone would
        # kill it with SIGPIPE at its next message.
        with open(log_path, "w") as err:
            proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                  start_new_session=True, check=False)
        return None if proc.returncode == 0 else (log_path.read_text().strip() or f"exit {proc.returncode}")

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if self.cmdline(pid) is None or b"zombie" in _status(pid):
                return
            time.sleep(0.005)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def signal(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# -- typed operations ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FixModes:
    dirs: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class WriteFiles:
    spec: DaemonSpec
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Start:
    spec: DaemonSpec
    was: str = ""  # why it is not running ('' the first time)


@dataclass(frozen=True, slots=True)
class Restart:
    spec: DaemonSpec
    pid: int
    why: str


@dataclass(frozen=True, slots=True)
class Reload:
    spec: DaemonSpec
    pid: int


@dataclass(frozen=True, slots=True)
class Stop:
    kind: str
    key: str
    pid: int | None


Op = FixModes | WriteFiles | Start | Restart | Reload | Stop


@dataclass
class Running:
    pid: int | None
    cmdline: tuple[str, ...] | None
    files: dict[str, str | None] = field(default_factory=dict)
    pidfile_left: str = ""  # a pid file whose process is gone: its content, for the log


@dataclass
class Observed:
    daemons: dict[Key, Running]
    bad_modes: tuple[Path, ...]


class Supervisor:
    """The daemon plane of one neutrino (owner)."""
    name = "daemons"

    def __init__(self, base: Path, procs: Processes | None = None, pointer: Path | None = None) -> None:
        self.base = base                # <root>/<owner>
        self.procs = procs or RealProcesses()
        self.pointer = pointer          # <state>/agent/dhcp -> <base>/dnsmasq
        self._pids: dict[Key, int] = {}

    # -- where -------------------------------------------------------------------------------------------
    def directory(self, kind: str, key: str) -> Path:
        return self.base / kind / key

    def expand(self, spec: DaemonSpec) -> tuple[str, ...]:
        d = str(self.directory(spec.kind, spec.key))
        return tuple(a.replace(DIR, d) for a in spec.argv)

    def pids(self) -> dict[Key, int]:
        """The processes the last pass left running (or found), by (kind, key)."""
        return dict(self._pids)

    def _owned_dirs(self) -> list[Path]:
        dirs = [self.base.parent, self.base]
        if self.base.is_dir():
            for kind in sorted(self.base.iterdir()):
                if kind.is_dir():
                    dirs += [kind, *sorted(p for p in kind.iterdir() if p.is_dir())]
        return dirs

    # -- observe -----------------------------------------------------------------------------------------
    def running_pid(self, kind: str, key: str, pidfile: str = "pid") -> tuple[int | None, tuple[str, ...] | None]:
        d = self.directory(kind, key)
        try:
            pid = int((d / pidfile).read_text().strip())
        except (OSError, ValueError):
            return None, None
        cmdline = self.procs.cmdline(pid)
        if not cmdline or not any(str(d) + "/" in a for a in cmdline):
            return None, None  # gone, or the pid now belongs to some other process
        return pid, cmdline

    def observe(self, desired: HostState) -> Observed:
        specs = {(s.kind, s.key): s for s in desired.daemons}
        found: dict[Key, Running] = {}
        if self.base.is_dir():
            for kind_dir in self.base.iterdir():
                for d in kind_dir.iterdir() if kind_dir.is_dir() else ():
                    if d.is_dir():
                        found[(kind_dir.name, d.name)] = self._observe_one(kind_dir.name, d.name, specs)
        for key in specs.keys() - found.keys():
            found[key] = Running(None, None, {n: None for n, _ in specs[key].files})
        bad = tuple(d for d in self._owned_dirs() if d.exists() and not d.stat().st_mode & 0o001)
        return Observed(found, bad)

    def _observe_one(self, kind: str, key: str, specs: dict[Key, DaemonSpec]) -> Running:
        spec = specs.get((kind, key))
        pid, cmdline = self.running_pid(kind, key, spec.pidfile if spec else "pid")
        run = Running(pid, cmdline)
        d = self.directory(kind, key)
        for name, _ in spec.files if spec else ():
            try:
                run.files[name] = (d / name).read_text()
            except FileNotFoundError:
                run.files[name] = None
        if pid is None and spec is not None:
            with contextlib.suppress(OSError):
                run.pidfile_left = (d / spec.pidfile).read_text().strip()
        return run

    # -- diff --------------------------------------------------------------------------------------------
    def diff(self, desired: HostState, obs: Observed, made: Collection[tuple[str | None, str]] = ()) -> list[Op]:
        ops: list[Op] = [FixModes(obs.bad_modes)] if obs.bad_modes else []
        wanted = {(s.kind, s.key) for s in desired.daemons}
        for spec in desired.daemons:
            run = obs.daemons[(spec.kind, spec.key)]
            changed = tuple(n for n, text in spec.files if run.files.get(n) != text)
            if changed:
                ops.append(WriteFiles(spec, changed))
            if run.pid is None:
                ops.append(Start(spec, run.pidfile_left))
                continue
            remade = [b for b in spec.binds if (spec.namespace, b) in made]
            if run.cmdline != self.expand(spec):
                ops.append(Restart(spec, run.pid, "its command line changed"))
            elif remade:
                ops.append(Restart(spec, run.pid, f"{', '.join(remade)} was made again"))
            elif changed and spec.reload_signal is None:
                ops.append(Restart(spec, run.pid, "its files changed"))
            elif changed or obs.bad_modes:
                ops.append(Reload(spec, run.pid))
        ops += [Stop(kind, key, run.pid) for (kind, key), run in sorted(obs.daemons.items())
                if (kind, key) not in wanted]
        return ops

    # -- apply -------------------------------------------------------------------------------------------
    def apply(self, ops: Iterable[Op]) -> int:
        """Every op is attempted; failures are raised together at the end."""
        done, errors = 0, []
        for op in ops:
            try:
                self._apply_one(op)
                done += 1
            except (KernelError, OSError) as exc:
                what = op.spec.title() if not isinstance(op, (FixModes, Stop)) else type(op).__name__
                errors.append(f"{what}: {exc}")
        if errors:
            raise KernelError("; ".join(errors))
        return done

    def _apply_one(self, op: Op) -> None:
        if isinstance(op, FixModes):
            for d in op.dirs:
                os.chmod(d, d.stat().st_mode | 0o055)
            log.info("made %s searchable again; running daemons reread their files", ", ".join(map(str, op.dirs)))
        elif isinstance(op, WriteFiles):
            self._prepare(op.spec)
            d = self.directory(op.spec.kind, op.spec.key)
            for name in op.names:
                _write(d / name, op.spec.file(name))
        elif isinstance(op, Start):
            if op.was:
                log.warning("%s is gone (pid file %s, %s); starting it again", op.spec.title(), op.was,
                            _exit_code(op.was))
            self._start(op.spec)
        elif isinstance(op, Restart):
            log.info("%s: %s; restarting it", op.spec.title(), op.why)
            self._pids.pop((op.spec.kind, op.spec.key), None)
            self.procs.kill(op.pid)
            self._start(op.spec)
        elif isinstance(op, Reload):
            assert op.spec.reload_signal is not None
            self.procs.signal(op.pid, op.spec.reload_signal)
            self._pids[(op.spec.kind, op.spec.key)] = op.pid
        elif isinstance(op, Stop):
            self._pids.pop((op.kind, op.key), None)
            if op.pid is not None:
                self.procs.kill(op.pid)
            shutil.rmtree(self.directory(op.kind, op.key), ignore_errors=True)

    def _prepare(self, spec: DaemonSpec) -> None:
        for d in (self.base.parent, self.base, self.base / spec.kind, self.directory(spec.kind, spec.key)):
            if not d.is_dir():
                d.mkdir(mode=0o755, exist_ok=True)
                os.chmod(d, 0o755)  # whatever the umask
        if spec.kind == "dnsmasq" and self.pointer is not None:
            self._point(self.pointer, self.base / spec.kind)

    @staticmethod
    def _point(link: Path, target: Path) -> None:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_dir() and not link.is_symlink():
            return  # a directory of an older neutrino: swept by the agent's legacy sweep
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    def _start(self, spec: DaemonSpec) -> None:
        self._prepare(spec)
        d = self.directory(spec.kind, spec.key)
        for name in spec.keep:
            (d / name).touch(exist_ok=True)
        (d / spec.pidfile).unlink(missing_ok=True)
        argv = self.expand(spec)
        if spec.namespace is not None:
            argv = ("ip", "netns", "exec", spec.namespace, *argv)
        failed = self.procs.start(argv, d / "start.err")
        if failed is not None:
            raise KernelError(f"{spec.kind} failed to start: {failed}", obj=spec.key, namespace=spec.namespace or "")
        deadline = time.monotonic() + 2
        while (pid := self.running_pid(spec.kind, spec.key, spec.pidfile)[0]) is None:
            if time.monotonic() > deadline:
                raise KernelError(f"{spec.kind} did not write its pid file", obj=spec.key,
                                  namespace=spec.namespace or "")
            time.sleep(0.005)
        self._pids[(spec.kind, spec.key)] = pid

    # -- the plane ---------------------------------------------------------------------------------------
    def remember(self, obs: Observed) -> None:
        self._pids = {k: r.pid for k, r in obs.daemons.items() if r.pid is not None}

    leaf = True  # nothing runs after the daemons

    def part(self, desired: HostState) -> object:
        return desired.daemons

    def names(self, desired: HostState) -> set[PortId]:
        return {p for s in desired.daemons for p in s.ports}

    def ready(self, desired: HostState) -> set[PortId]:
        return {p for s in desired.daemons if (s.kind, s.key) in self._pids for p in s.ports}

    def sync(self, desired: HostState, made: Made = frozenset()) -> PlaneResult:
        obs = self.observe(desired)
        self.remember(obs)
        ops = self.diff(desired, obs, made)
        changes = self.apply(ops) if ops else 0
        if not desired.daemons:
            self._prune()
        return PlaneResult(changes, frozenset(self.ready(desired)))

    def _prune(self) -> None:
        """No daemon wanted (an empty host, cleanup): this owner's run directory goes too, so nothing of it
        stays in /run. Only empty directories are removed; a daemon's files are removed when it stops."""
        for d in reversed(self._owned_dirs()[1:]):  # deepest first; never the shared root above the owner
            with contextlib.suppress(OSError):
                d.rmdir()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)  # daemons read these after dropping root
    tmp.replace(path)


class ExitWatch:
    """Process exits as readable file descriptors (pidfds). Daemons daemonize: they are not the agent's
    children, so no SIGCHLD says when one dies; its pidfd becomes readable when it does."""

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
