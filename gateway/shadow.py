"""Pipeline stage: shadow, a copy of some requests sent to another version and compared.

The copy runs in the background with its own deadline; it never delays or fails the primary.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import numpy as np
from google.protobuf.message import DecodeError

from common.datatypes import NUMPY_DTYPES
from common.errors import TensorgateError
from common.policy import TrafficPolicy
from common.proto import grpc_service_pb2 as pb
from common.tensors import contents_to_raw, deserialize_bytes, element_count
from gateway.metrics import GatewayMetrics
from gateway.request_parts import Request

#: call(model, version, request, timeout_s) -> the serialized ModelInferResponse.
ShadowCall = Callable[[str, str, Request, float], Awaitable[bytes]]
Values = np.ndarray | list[bytes]  # a numeric tensor, or the elements of a BYTES one
Tensor = tuple[str, tuple[int, ...], Values]  # datatype, shape, values

_FLOATS = ("FP16", "BF16", "FP32", "FP64")
# Answers larger than this are compared in a thread, so the event loop keeps moving bytes.
_INLINE_COMPARE_BYTES = 1 << 20


def should_shadow(policy: TrafficPolicy, rng: random.Random, primary: str) -> bool:
    """Whether to copy this request: `shadow_percent` of the time, to a version not `primary`."""
    shadow = policy.shadow_version
    if not shadow or shadow == primary or policy.shadow_percent <= 0:
        return False
    return rng.random() * 100.0 < policy.shadow_percent


class Shadow:
    """Sends shadow copies, at most `max_in_flight` at once, and records how they did.

    Per copy: `tensorgate_shadow_requests` by code (OK, a gRPC code name, or DROPPED when the
    bound is reached), its latency, and, when both answers are OK, whether they agree (`agree`).
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        call: ShadowCall,
        timeout_s: float = 5.0,
        max_in_flight: int = 64,
    ) -> None:
        self.metrics = metrics
        self.call = call
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        # NOTE: the loop keeps only weak references to tasks; this set keeps them alive.
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def send(
        self, model: str, version: str, request: Request, primary: asyncio.Future[bytes]
    ) -> bool:
        """Start a copy of `request` to `version` in the background; False if it was dropped.

        `request` already names `version` (see `rewrite.with_version`). `primary` is the future of
        the primary's answer; it is only watched, never awaited in a way that could cancel it.
        """
        if len(self._tasks) >= self.max_in_flight:
            self.metrics.shadow_requests.labels(model, version, "DROPPED").inc()
            return False
        task = asyncio.get_running_loop().create_task(self._run(model, version, request, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait for the copies now running to finish (their own deadlines bound the wait)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the copies still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(
        self, model: str, version: str, request: Request, primary: asyncio.Future[bytes]
    ) -> None:
        answer = await self._forward(model, version, request)
        if answer is None:
            return
        # NOTE: asyncio.wait, not await: cancelling this task must never cancel the primary.
        await asyncio.wait((primary,), timeout=self.timeout_s)
        if not primary.done() or primary.cancelled() or primary.exception() is not None:
            return
        first = primary.result()
        try:
            if len(first) + len(answer) > _INLINE_COMPARE_BYTES:
                loop = asyncio.get_running_loop()
                verdict = await loop.run_in_executor(None, agree, first, answer)
            else:
                verdict = agree(first, answer)
        except Exception:
            verdict = None  # NOTE: a comparison that breaks is no reason to disturb anything
        # NOTE: answers that cannot be compared (other outputs, shapes or types) count as
        # disagreeing: the shadow version is then no drop-in replacement for the primary.
        label = "true" if verdict else "false"
        self.metrics.shadow_agreement.labels(model, version, label).inc()

    async def _forward(self, model: str, version: str, request: Request) -> bytes | None:
        """The shadow's answer, or None after counting its failure."""
        started = time.perf_counter()
        code = "OK"
        try:
            return await asyncio.wait_for(
                self.call(model, version, request, self.timeout_s), self.timeout_s
            )
        except TensorgateError as exc:
            code = exc.code.name
        except asyncio.TimeoutError:
            code = "DEADLINE_EXCEEDED"
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            # NOTE: whatever the shadow does wrong stays here; it is counted, never raised.
            code = "UNKNOWN"
        finally:
            self.metrics.shadow_requests.labels(model, version, code).inc()
            self.metrics.shadow_latency.labels(model, version).observe(
                time.perf_counter() - started
            )
        return None


def agree(primary: bytes, shadow: bytes) -> bool | None:
    """Whether two serialized ModelInferResponses give the same answer; None if not comparable.

    Outputs are matched by name and must have the same datatype and shape. Float outputs with a
    class axis (2-D or more, last axis over 1) agree when every row has the same argmax; other
    float outputs when np.allclose(rtol=1e-3, atol=1e-5); integer, BOOL and BYTES outputs when
    they are equal.
    """
    first, second = _outputs(primary), _outputs(shadow)
    if first is None or second is None or first.keys() != second.keys():
        return None
    verdicts = []
    for name, (datatype, shape, values) in first.items():
        other_datatype, other_shape, other_values = second[name]
        if datatype != other_datatype or shape != other_shape:
            return None
        verdicts.append(_same(datatype, shape, values, other_values))
    return all(verdicts)


def _same(datatype: str, shape: tuple[int, ...], a: Values, b: Values) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    if a.size == 0:
        return True
    if datatype not in _FLOATS:
        return bool(np.array_equal(a, b))
    if len(shape) >= 2 and shape[-1] > 1:
        return bool(np.array_equal(a.argmax(axis=-1), b.argmax(axis=-1)))
    return bool(np.allclose(a, b, rtol=1e-3, atol=1e-5))


def _outputs(answer: bytes) -> dict[str, Tensor] | None:
    """name -> (datatype, shape, values) for every output, or None if any cannot be read."""
    try:
        response = pb.ModelInferResponse.FromString(answer)
        raw = response.raw_output_contents
        if raw and len(raw) != len(response.outputs):
            return None
        tensors: dict[str, Tensor] = {}
        for index, output in enumerate(response.outputs):
            what = f"output '{output.name}'"
            data = raw[index] if raw else contents_to_raw(output.datatype, output.contents, what)
            shape = tuple(output.shape)
            tensors[output.name] = (output.datatype, shape, _decode(output.datatype, shape, data))
        return tensors
    except (DecodeError, TensorgateError, ValueError):
        return None


def _decode(datatype: str, shape: tuple[int, ...], data: bytes) -> Values:
    """The values of one raw tensor; ValueError when they do not fill its shape."""
    count = element_count(shape, "output")
    if datatype == "BYTES":
        items = deserialize_bytes(data, "output")
        if len(items) != count:
            raise ValueError("values do not fill the shape")
        return items
    if datatype == "BF16":
        # NOTE: numpy has no bfloat16; its bits are the top half of a float32's.
        array = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
    elif datatype in NUMPY_DTYPES:
        array = np.frombuffer(data, NUMPY_DTYPES[datatype])
    else:
        raise ValueError(f"unknown datatype {datatype}")
    if array.size != count:
        raise ValueError("values do not fill the shape")
    return array.reshape(shape)
