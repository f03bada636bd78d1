"""The route stage: which runtime workers may serve a model version; owns the endpoint set.

Every worker serves the whole repository for now; traffic policies (A/B, shadow) hang here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.health import Endpoint, Health
from gateway.upstream import Upstream


class Router:
    """The endpoint set, and the pool each model version may use."""

    def __init__(self, health: Health, upstreams: Sequence[Upstream] = ()) -> None:
        self.health = health
        #: Replaced, never mutated, so a pool handed out stays as it was for its request.
        self.endpoints: list[Endpoint] = []
        for upstream in upstreams:
            self.add(upstream)

    def pool(self, model: str, version: str) -> Sequence[Endpoint]:
        """The endpoints for (model, version); an explicit version passes through unchanged."""
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
