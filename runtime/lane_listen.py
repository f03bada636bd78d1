"""The lane's unix listener: each connection's hello is read off the raw socket, where it can
carry the gateway's arena (SCM_RIGHTS), answered with ours, then the socket goes to a LaneServer.

A peer that sends no hello within lane.HELLO_TIMEOUT_S is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable

from common import arena, lane, lane_socket
from runtime.lane_server import Greeting, LaneServer, Refused, check_hello

log = logging.getLogger("tensorgate.runtime")


class UnixLane:
    """Accepts gateways on a unix socket; ``factory`` builds each connection's protocol."""

    def __init__(self, path: str, factory: Callable[[Greeting], LaneServer]) -> None:
        self.path = path
        self.factory = factory
        self.sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._greeting: set[asyncio.Task] = set()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(self.path).st_mode):  # a stale socket of a dead worker
                os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(1024)
        sock.setblocking(False)
        self.sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors: the next accept may work
                log.warning("lane accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._greet(conn))
            self._greeting.add(task)
            task.add_done_callback(self._greeting.discard)

    async def _greet(self, conn: socket.socket) -> None:
        try:
            greeting = await asyncio.wait_for(self._hello(conn), lane.HELLO_TIMEOUT_S)
        except Refused as refused:
            refused.log()
            with contextlib.suppress(OSError):
                await lane_socket.send_frame(conn, refused.frame())
            conn.close()
            return
        except (asyncio.TimeoutError, OSError, ValueError) as exc:
            log.warning("lane connection dropped before its hello: %s",
                        "none came in time" if isinstance(exc, asyncio.TimeoutError) else exc)
            conn.close()
            return
        except BaseException:  # NOTE: cancelled by close(): the socket goes now, not at GC
            conn.close()
            raise
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: self.factory(greeting), conn)
        except BaseException:
            conn.close()
            for held in (greeting.arena, greeting.out):
                if held is not None:
                    held.close()
            raise

    async def _hello(self, conn: socket.socket) -> Greeting:
        frame, fds = await lane_socket.recv_frame(conn)
        try:
            features = check_hello(frame)
        except Refused:
            lane_socket.close_fds(fds)
            raise
        size = features.get("arena_bytes", 0)
        greeting = Greeting()
        if fds and isinstance(size, int) and size > 0:
            try:
                greeting.arena = arena.Mapping(fds.pop(), size)
            except ValueError as exc:
                lane_socket.close_fds(fds)
                raise Refused(0, f"the gateway's arena is unusable: {exc}") from None
        lane_socket.close_fds(fds)
        accepts: dict[str, object] = {"accepts": []}
        if greeting.arena is not None:
            greeting.out = arena.Arena(greeting.arena.size, f"tensorgate-lane-out-{os.getpid()}")
            accepts = {"accepts": ["arena"], "arena_bytes": greeting.out.size}
        try:
            out_fd = [greeting.out.fd] if greeting.out is not None else []
            await lane_socket.send_frame(conn, lane.hello(accepts), out_fd)
        except BaseException:
            for held in (greeting.arena, greeting.out):
                if held is not None:
                    held.close()
            raise
        if greeting.out is not None:
            greeting.out.close_fd()  # NOTE: the gateway has its own copy of it now
        return greeting

    def close(self) -> None:
        for task in (self._accepting, *self._greeting):
            if task is not None:
                task.cancel()
        if self.sock is not None:
            # NOTE: the path stays, as asyncio's servers leave it: a replacement worker may
            # already listen there, and the next start removes a stale one.
            self.sock.close()
            self.sock = None
