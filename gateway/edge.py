"""The gateway's view of edge bundles: a blocking builder injected at start-up.

`tensorgate.edge` builds bundles; the gateway sits below it, so it only knows this signature.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

#: build(model, version, target) -> the bundle's .tar.gz; raises TensorgateError.
EdgeBuilder = Callable[[str, int, str], Path]
