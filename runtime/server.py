"""The runtime's OIP gRPC transport: generic handlers built from the core's table of RPCs."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from common.errors import TensorgateError
from runtime.core import Handler, RuntimeCore

SERVICE = "inference.GRPCInferenceService"


def _rpc(handler: Handler) -> Any:
    async def call(request: Any, context: Any) -> Message:
        try:
            return await handler(request, context.time_remaining())
        except TensorgateError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    return call


def grpc_handlers(core: RuntimeCore) -> grpc.GenericRpcHandler:
    """Every RPC of the core; the others answer UNIMPLEMENTED."""
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(
            _rpc(handler), request_deserializer=decode, response_serializer=_serialize)
        for name, (decode, handler) in core.methods.items()
    })


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
