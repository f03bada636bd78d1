"""The route stage: which runtime workers may serve a model version.

Every worker serves the whole repository for now; traffic policies (A/B, shadow) hang here.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.upstream import Upstream


class Router:
    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = list(upstreams)

    def pool(self, model: str, version: str) -> Sequence[Upstream]:
        """The endpoints for (model, version); an explicit version passes through unchanged."""
        return self.upstreams
