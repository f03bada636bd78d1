"""Where the runtime workers are: fixed addresses as given, DNS names re-resolved into one per IP.

A name (`workers.svc:8012`, say a Kubernetes headless Service) is resolved every `dns_refresh_s`,
off the hot path; new IPs join the router, vanished ones are drained and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.names import is_whole
from common.settings import GatewaySettings
from gateway.health import Endpoint
from gateway.route import Router
from gateway.upstream import Upstream

log = logging.getLogger("tensorgate.gateway")

Resolver = Callable[[str, int], Awaitable[list[str]]]
Dial = Callable[[str], Upstream]
_GRPC = "grpc://"
_DRAIN_POLL_S = 0.05


@dataclass(frozen=True)
class Name:
    """A runtime address whose host is a DNS name."""

    prefix: str
    host: str
    port: int

    def address(self, ip: str) -> str:
        # NOTE: gRPC targets bracket IPv6; the lane splits at the last colon and needs none.
        if self.prefix and ":" in ip:
            return f"{self.prefix}[{ip}]:{self.port}"
        return f"{self.prefix}{ip}:{self.port}"


def dns_name(address: str) -> Name | None:
    """The name in `address`, or None for an IP address, a unix socket or localhost."""
    if address.startswith("unix:"):
        return None
    prefix = _GRPC if address.startswith(_GRPC) else ""
    host, colon, port = address.removeprefix(prefix).rpartition(":")
    host = host.strip("[]")
    # NOTE: localhost names this machine, not a set of workers: resolved, it would give one
    # worker twice (127.0.0.1 and ::1).
    if not colon or not is_whole(port) or not host or host == "localhost":
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return Name(prefix, host, int(port))
    return None


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class Discovery:
    """Fills the router: fixed addresses at once, names at start() and every refresh after."""

    def __init__(self, settings: GatewaySettings, router: Router, dial: Dial,
                 resolver: Resolver = resolve) -> None:
        self.router = router
        self.dial = dial
        self.resolver = resolver
        self.refresh_s = settings.dns_refresh_s
        #: How long a vanished endpoint may finish its calls before it is closed.
        self.drain_s = settings.default_timeout_s
        self.names: list[Name] = []
        self.current: dict[Name, set[str]] = {}
        self._failing: set[Name] = set()
        self._task: asyncio.Task | None = None
        self._draining: set[asyncio.Task] = set()
        for address in settings.runtime_endpoints:
            name = dns_name(address)
            if name is None:
                router.add(dial(address))
            elif name not in self.names:
                self.names.append(name)

    async def start(self) -> None:
        """Resolve every name once, then keep re-resolving in the background."""
        if not self.names:
            return
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    async def refresh(self) -> None:
        for name in self.names:
            try:
                ips = await self.resolver(name.host, name.port)
            except OSError as exc:
                # NOTE: a failed lookup keeps the workers we know; probes judge those.
                if name not in self._failing:
                    self._failing.add(name)
                    log.warning("cannot resolve runtime workers %s: %s", name.host, exc)
                continue
            self._failing.discard(name)
            if ips:
                self._update(name, {name.address(ip) for ip in ips})

    def _update(self, name: Name, wanted: set[str]) -> None:
        current = self.current.get(name, set())
        for address in sorted(wanted - current):
            self.router.add(self.dial(address))
            log.info("runtime worker %s added (from %s)", address, name.host)
        for address in sorted(current - wanted):
            endpoint = self.router.remove(address)
            if endpoint is not None:
                log.info("runtime worker %s removed (gone from %s); draining", address,
                         name.host)
                task = asyncio.get_running_loop().create_task(self._drain(endpoint))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
        self.current[name] = wanted

    async def _drain(self, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self.drain_s
        try:
            while endpoint.upstream.outstanding and loop.time() < until:
                await asyncio.sleep(_DRAIN_POLL_S)
        finally:
            await endpoint.upstream.close()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._draining) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
