"""Before a headless run: can the users start at all? One metadata call per model says, so a
missing key or model stops the run at once with a line on how to fix it."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from urllib.parse import quote

KEY_HINT = ("pass an API key with --api-key KEY or the TENSORGATE_API_KEY environment variable "
            "(`tensorgate serve` writes its first admin key to tensorgate.admin-key beside its "
            "registry; `tensorgate keys create --name loadtest --role infer` makes one for load "
            "tests)")


def problem(host: str, models: Sequence[str], headers: Mapping[str, str],
            timeout_s: float = 10.0) -> str | None:
    """Why the users could not start against `host`, in words; None when they can."""
    # NOTE: unverified like FastHttpUser's default (insecure=True), so a self-signed test
    # server is checked as the users will see it.
    context = ssl._create_unverified_context() if host.startswith("https:") else None
    for model in models:
        url = f"{host.rstrip('/')}/v2/models/{quote(model, safe='')}"
        request = urllib.request.Request(url, headers=dict(headers))
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=context):
                continue
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code in (401, 403):
                given = headers.get("authorization")
                refused = "the key given" if given else "a call without a key"
                return f"{host} refused {refused} (HTTP {exc.code}: {detail}); {KEY_HINT}"
            if exc.code == 404:
                return (f"{host} has no model {model!r} (HTTP 404: {detail}); choose one it "
                        "serves with --model or --models")
            return f"{host} answered the metadata call of {model!r} with HTTP {exc.code}: {detail}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"cannot reach {host}: {reason} (is tensorgate serving there? see --host)"
    return None


def _detail(exc: urllib.error.HTTPError) -> str:
    body = exc.read(2000).decode(errors="replace")
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body.strip()[:200] or exc.reason
