"""The endpoint set: the runtime workers a request may be sent to.

Every worker serves the whole repository for now, so every request's pool is the whole set; the
version is chosen before (production alias, A/B split: `Pipeline._route`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.health import Endpoint, Health
from gateway.upstream import Upstream


class Router:
    """The endpoint set, and the pool a request may use."""

    def __init__(self, health: Health, upstreams: Sequence[Upstream] = ()) -> None:
        self.health = health
        #: Replaced, never mutated, so a pool handed out stays as it was for its request.
        self.endpoints: list[Endpoint] = []
        for upstream in upstreams:
            self.add(upstream)

    def pool(self) -> Sequence[Endpoint]:
        """The endpoints a request may use: every worker serves the whole repository, so all."""
        return self.endpoints

    def addresses(self) -> set[str]:
        return {endpoint.address for endpoint in self.endpoints}

    def add(self, upstream: Upstream) -> Endpoint:
        endpoint = Endpoint(upstream)
        self.endpoints = [*self.endpoints, endpoint]
        self.health.watch(endpoint)
        return endpoint

    def remove(self, address: str) -> Endpoint | None:
        """Take an endpoint out of every new pool; the caller drains and closes it."""
        for endpoint in self.endpoints:
            if endpoint.address == address:
                self.endpoints = [e for e in self.endpoints if e is not endpoint]
                self.health.forget(endpoint)
                return endpoint
        return None

    async def close(self) -> None:
        endpoints, self.endpoints = self.endpoints, []
        for endpoint in endpoints:
            self.health.forget(endpoint)
        await asyncio.gather(*(endpoint.upstream.close() for endpoint in endpoints))
