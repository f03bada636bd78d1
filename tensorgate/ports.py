"""The ports of one `serve` or `gateway`, claimed before anything starts, or one line on why not.

A lock file per host and port, held while the process lives, names the tensorgate that serves it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.model_config import ConfigError
from common.names import is_whole
from common.settings import GatewaySettings

#: Overrides where the lock files live (default: $XDG_RUNTIME_DIR/tensorgate, else a private
#: folder in the temporary directory).
RUN_DIR_ENV = "TENSORGATE_RUN_DIR"


@dataclass
class Claim:
    """Ports locked (and, for a supervisor, bound) by this process until `close()`."""

    settings: GatewaySettings
    sockets: list[socket.socket] = field(default_factory=list)
    locks: list[tuple[int, Path]] = field(default_factory=list)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for fd, path in self.locks:
            # NOTE: removed while still locked, so no newcomer can lock the file we leave.
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        self.sockets, self.locks = [], []

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def claim(settings: GatewaySettings, reserve: bool) -> Claim:
    """Lock the HTTP, gRPC and metrics ports and check that nothing else holds them. With
    `reserve`, bind HTTP and gRPC (SO_REUSEPORT) so that this process's gateway children, and
    only they, share them; port 0 then becomes the port they all get. ConfigError on a clash."""
    wanted = [("--http-port", settings.http_port), ("--grpc-port", settings.grpc_port),
              ("--metrics-port", settings.metrics_port)]
    _no_twice(wanted)
    held = Claim(settings)
    try:
        ports = {flag: _take(held, settings.host, flag, port, reserve and flag != "--metrics-port")
                 for flag, port in wanted}
    except BaseException:
        held.close()
        raise
    held.settings = replace(settings, http_port=ports["--http-port"],
                            grpc_port=ports["--grpc-port"])
    return held


def _no_twice(wanted: Sequence[tuple[str, int]]) -> None:
    seen: dict[int, str] = {}
    for flag, port in wanted:
        if port > 0 and port in seen:
            raise ConfigError(f"{flag} {port} is also {seen[port]}: give each its own port")
        seen[port] = flag


def _take(held: Claim, host: str, flag: str, port: int, reserve: bool) -> int:
    """The port, locked and checked (and bound when `reserve`); port 0 and -1 are left alone
    unless reserved."""
    if port < 0 or (port == 0 and not reserve):
        return port
    if port > 0:
        held.locks.append(_lock(host, flag, port))
        _probe(host, flag, port)
    if not reserve:
        return port
    sock = socket.socket(_family(host))
    held.sockets.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    _bind(sock, host, flag, port)
    bound = int(sock.getsockname()[1])
    if port == 0:
        held.locks.append(_lock(host, flag, bound))
    return bound


def _probe(host: str, flag: str, port: int) -> None:
    """Bind without SO_REUSEPORT, so any socket on the port (a sibling tensorgate's included)
    is a clash; SO_REUSEADDR, so connections of a previous run in TIME_WAIT are not."""
    with socket.socket(_family(host)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind(sock, host, flag, port)


def _bind(sock: socket.socket, host: str, flag: str, port: int) -> None:
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(_clash(host, flag, port, exc)) from None


def _clash(host: str, flag: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        pid = holder(port)
        if pid is not None:
            return _served(flag, port, pid)
        return (f"{flag} {port}: the port is in use on {host} by another program "
                f"(`ss -ltnp 'sport = :{port}'` shows which); stop it, or choose another port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host}: {exc.strerror} (expected an address of this machine)"
    return f"{flag} {port} on {host}: {exc.strerror}"


def _served(flag: str, port: int, pid: int) -> str:
    return f"{flag} {port}: already served by tensorgate pid {pid}; stop it, or choose another port"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _lock(host: str, flag: str, port: int) -> tuple[int, Path]:
    """An exclusive flock on this host and port's lock file, holding our pid; the kernel drops
    it when the process ends, however it ends."""
    path = run_dir() / f"port-{re.sub(r'[^0-9A-Za-z.-]', '_', host)}-{port}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid_in(fd)
        os.close(fd)
        raise ConfigError(_served(flag, port, pid) if pid else
                          f"{flag} {port}: already served on {host} by another tensorgate "
                          f"(lock {path}); stop it, or choose another port") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, path


def holder(port: int) -> int | None:
    """The pid of another live tensorgate holding `port` on any host, from the lock files."""
    with contextlib.suppress(OSError):
        for path in run_dir().glob(f"port-*-{port}.lock"):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _pid_in(fd)
                if pid != os.getpid():
                    return pid
            finally:
                os.close(fd)
    return None


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if is_whole(text) else None


def run_dir() -> Path:
    """The folder of the lock files: ours alone, so another user cannot plant or read them."""
    base = os.environ.get(RUN_DIR_ENV)
    if base:
        path = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "tensorgate"
    else:
        path = Path(tempfile.gettempdir()) / f"tensorgate-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{path}: expected a folder owned by uid {os.getuid()} for the port "
                          f"locks (set {RUN_DIR_ENV} to another)")
    return path

