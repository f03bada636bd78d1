"""A runtime endpoint: raw-bytes calls over the lane, or over gRPC to any OIP server (Triton too).

`connect` picks by address: `grpc://HOST:PORT` speaks OIP gRPC; anything else is a lane address.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from common import tls as common_tls
from common.arena import Arena
from common.errors import TensorgateError
from common.settings import TlsSettings
from gateway.lane_client import LaneUpstream
from gateway.request_parts import Request, whole

log = logging.getLogger("tensorgate.gateway")

#: What names an address in grpc's connection errors.
_ADDRESS = re.compile(r"\b(?:ipv4|ipv6|unix|unix-abstract|dns):|addresses")

SERVICE = "/inference.GRPCInferenceService/"

RawCall = Callable[..., Awaitable[bytes]]


class Upstream(Protocol):
    """What the pipeline needs of an endpoint: raw calls and the count of calls in flight."""

    address: str
    outstanding: int

    async def call(self, name: str, request: Request, timeout: float | None) -> bytes: ...

    async def close(self) -> None: ...


def connect(address: str, max_message_bytes: int, tls: TlsSettings | None = None,
            arena: Arena | None = None) -> Upstream:
    """The upstream for `address`; over TLS to TCP addresses when `tls` names a CA or a client
    certificate (unix sockets are local and guarded by file permissions). `arena`: offered to
    runtimes on unix lanes, for tensors by reference."""
    secure = tls is not None and bool(tls.upstream_ca or tls.upstream_cert)
    if address.startswith("grpc://"):
        credentials = (common_tls.grpc_channel_credentials(tls.upstream_ca, tls.upstream_cert,
                                                           tls.upstream_key)
                       if secure and tls is not None else None)
        return GrpcUpstream(address.removeprefix("grpc://"), max_message_bytes, credentials)
    context = (common_tls.client_context(tls.upstream_ca, tls.upstream_cert, tls.upstream_key)
               if secure and tls is not None and not address.startswith("unix:") else None)
    return LaneUpstream(address, max_message_bytes, context, arena)


class GrpcUpstream:
    """Calls to one OIP gRPC server with request and response bytes passed through untouched."""

    def __init__(self, address: str, max_message_bytes: int,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.address = address
        self.outstanding = 0
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self.channel = (grpc.aio.insecure_channel(address, options=options) if credentials is None
                        else grpc.aio.secure_channel(address, credentials, options=options))
        self._calls: dict[str, RawCall] = {}

    def method(self, name: str) -> RawCall:
        call = self._calls.get(name)
        if call is None:
            call = self._calls[name] = self.channel.unary_unary(SERVICE + name)
        return call

    async def call(self, name: str, request: Request, timeout: float | None) -> bytes:
        """One RPC; a failure becomes a TensorgateError carrying the runtime's code and message."""
        self.outstanding += 1
        try:
            return await self.method(name)(whole(request), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self.address) from None
        finally:
            self.outstanding -= 1

    async def close(self) -> None:
        await self.channel.close()


def _error(exc: grpc.aio.AioRpcError, address: str) -> TensorgateError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        # NOTE: grpc's own details name the address ("failed to connect to all addresses;
        # ipv4:..."): the log has them, the caller does not.
        details = exc.details() or ""
        log.warning("runtime worker %s is unavailable: %s", address, details)
        if _ADDRESS.search(details) or address in details:
            return TensorgateError(code, "a runtime worker is unavailable")
        return TensorgateError(code, f"a runtime worker is unavailable: {details}")
    return TensorgateError(code, exc.details() or code.name)
