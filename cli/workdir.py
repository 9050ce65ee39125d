"""The work dir of `sdq up`: one stable place for the local stack's data, its ports, and a lock.

By default `$SDQ_HOME`, else the platform's per-user data dir (`$XDG_DATA_HOME/sdq` or
`~/.local/share/sdq` on Linux, `~/Library/Application Support/sdq` on macOS, `%LOCALAPPDATA%\\sdq` on
Windows), so every `sdq up` finds the jobs of the last one. The ports a stack ran on are remembered
there (`ports.json`) and used again; a port that is busy is an error naming it and the flag that
changes it, never a silent move (the next start would find an empty Redis, and the CLI's server
would point elsewhere). `up.lock` is held while a stack runs: a second `sdq up` on the same work dir
stops with one line.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO

import socket
from sdq.exceptions import ConfigError

PORTS = {"producer": ("--port", 8000), "redis": ("--redis-port", 6379), "s3": ("--s3-port", 9000)}
"""Each service of `sdq up`: the flag that sets its port, and its port when nothing is remembered."""


def default_workdir() -> Path:
    """`$SDQ_HOME`, else the platform's per-user data dir for sdq."""
    if os.environ.get("SDQ_HOME"):
        return Path(os.environ["SDQ_HOME"])
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "sdq"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "sdq"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "sdq"


def remembered_ports(workdir: Path) -> dict[str, int]:
    """The ports the last stack on `workdir` ran on (empty if none)."""
    path = workdir / "ports.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: int(v) for k, v in data.items() if k in PORTS and isinstance(v, int)}


def remember_ports(workdir: Path, ports: dict[str, int]) -> None:
    """Keep the ports a stack runs on, for the next start on `workdir`."""
    (workdir / "ports.json").write_text(json.dumps(ports, sort_keys=True) + "\n", encoding="utf-8")


def choose_ports(workdir: Path, requested: dict[str, int | None], skip: set[str] = frozenset()) -> dict[str, int]:
    """The port of each service (not in `skip`): the flag's, else the remembered one, else the default.
    Raises ConfigError naming the port and its flag when one is busy."""
    remembered = remembered_ports(workdir)
    out: dict[str, int] = {}
    for name, (flag, default) in PORTS.items():
        if name in skip:
            continue
        port = requested.get(name) or remembered.get(name) or default
        if not 0 < port < 65536:
            raise ConfigError(f"{flag} {port} is not a TCP port")
        if not listenable(port):
            why = ("given" if requested.get(name) else "remembered in the work dir" if remembered.get(name)
                   else "default")
            raise ConfigError(f"port {port} for {name} ({why}) is in use (another {name}, or a stack still "
                              f"stopping?): free it, or choose another with {flag} N")
        out[name] = port
    return out


def listenable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now (as servers bind: connections of a stopped one
    still closing do not count, a listening socket does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class WorkdirLock:
    """An exclusive lock on a work dir while a stack runs on it (released when the process ends)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "up.lock"
        self._file: IO | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError (one line) if another `sdq up` holds it."""
        f = open(self.path, "a+", encoding="utf-8")
        try:
            _lock(f)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise ConfigError(f"work dir {self.path.parent} is in use by another `sdq up` (pid {pid}): stop it, "
                              f"or choose another with --workdir DIR") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        """Let the next `sdq up` have the work dir."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _lock(f: IO) -> None:
    """Lock `f` without waiting; OSError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
