"""`tensorgate health`: the container's HEALTHCHECK, reading the served process's own flags.

It parses the command line of the running `serve` or `gateway` (PID 1 in the image) with the
same parser, so a changed --http-port, --host or --tls-cert is checked as served.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

COMMANDS = ("health",)
READY_PATH = "/v2/health/ready"
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def add_commands(commands: argparse._SubParsersAction) -> None:
    health = commands.add_parser(
        "health", help="exit 0 when the local gateway is ready (the image's HEALTHCHECK)")
    health.add_argument("--pid", type=int, default=1,
                        help="the `tensorgate serve` or `gateway` process to check (1)")
    health.add_argument("--url", help="check this URL instead of the process's own address")
    health.add_argument("--timeout", type=float, default=4.0, help="seconds (4)")


def served_argv(pid: int) -> list[str]:
    """The arguments after `tensorgate` (or `-m tensorgate`) in the process's command line."""
    words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    for i, word in enumerate(words):
        if Path(word).name == "tensorgate":  # the script's path, or `python -m tensorgate`
            return [w for w in words[i + 1:] if w]
    raise ValueError(f"process {pid} is not tensorgate: {' '.join(words)[:200]}")


def ready_url(argv: list[str], parse: Callable[[list[str]], argparse.Namespace]) -> str:
    """The readiness URL of a `serve` or `gateway` started with `argv`."""
    args = parse(argv)
    if args.command not in ("serve", "gateway"):
        raise ValueError(f"`tensorgate {args.command}` has no HTTP health endpoint")
    if args.http_port <= 0:
        raise ValueError(f"--http-port {args.http_port}: the port is not known in advance")
    host = WILDCARDS.get(args.host, args.host)
    scheme = "https" if args.tls_cert else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{args.http_port}{READY_PATH}"


def run(args: argparse.Namespace, parse: Callable[[list[str]], argparse.Namespace]) -> int:
    try:
        url = args.url or ready_url(served_argv(args.pid), parse)
    except (OSError, ValueError) as exc:
        print(f"tensorgate health: {exc}", file=sys.stderr)
        return 1
    # NOTE: the certificate names the service, not the loopback address checked here.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context):
            return 0
    except (urllib.error.URLError, OSError) as exc:
        print(f"tensorgate health: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
