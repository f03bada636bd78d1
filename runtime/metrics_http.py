"""The /metrics listener: prometheus-client's exposition, with whole numbers written whole, as
Triton writes them (perf_analyzer reads GPU memory bytes as an integer and stops at a '.')."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# A sample line whose value prometheus-client wrote in exponent form, e.g. 3.221225472e+09.
_EXPONENT = re.compile(rb"^([^#\n][^\n]* )(\d\.\d+e\+\d+)$", re.MULTILINE)
_WHOLE_UP_TO = 2.0**53  # beyond it a double no longer holds every integer


def whole_numbers(text: bytes) -> bytes:
    """Sample values that are whole numbers in exponent form, written as integers."""
    def whole(match: re.Match[bytes]) -> bytes:
        value = float(match.group(2))
        if value.is_integer() and value < _WHOLE_UP_TO:
            return match.group(1) + str(int(value)).encode()
        return match.group(0)
    return _EXPONENT.sub(whole, text)


def exposition_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """prometheus-client's WSGI app, its text answer rewritten by whole_numbers (uncompressed:
    the rewrite needs the text, and a scrape on the same host gains nothing from gzip)."""
    inner = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ = {k: v for k, v in environ.items() if k != "HTTP_ACCEPT_ENCODING"}
        answer: list[Any] = []
        body = b"".join(inner(environ, lambda status, headers, *_: answer.extend(
            (status, headers))))
        status, headers = answer
        body = whole_numbers(body)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]
    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one a few seconds would drown the log."""


def start(port: int, host: str, registry: CollectorRegistry) -> None:
    """Serve /metrics on a daemon thread; OSError when the port cannot be bound."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(str(address[0]), port, exposition_app(registry), Server,
                        handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
