"""The stream's hand-made ModelStreamInferResponse bytes, checked with protobuf's own parser, and
the `timeout` parameter as the peek reads it (the same rule as the HTTP transport's)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common import memory
from common.errors import TensorgateError, invalid_argument
from common.proto import grpc_service_pb2 as pb
from gateway.context import RequestContext
from gateway.grpc_stream import WINDOW, Stream, answered, deadline, failed
from gateway.http_layouts import timeout_of
from gateway.peek import infer_fields


def test_an_answer_is_wrapped_untouched() -> None:
    answer = pb.ModelInferResponse(model_name="digits", model_version="2", id="r-1")
    answer.raw_output_contents.append(b"\x01" * 300)  # a length past one varint byte
    parsed = pb.ModelStreamInferResponse.FromString(answered(answer.SerializeToString()))
    assert parsed.error_message == "" and parsed.infer_response == answer


def test_a_failure_carries_its_message_and_the_request_it_answers() -> None:
    parsed = pb.ModelStreamInferResponse.FromString(failed("input 'X': ünknown", "m", "3", "r"))
    assert parsed.error_message == "input 'X': ünknown"
    assert (parsed.infer_response.model_name, parsed.infer_response.model_version,
            parsed.infer_response.id) == ("m", "3", "r")
    bare = pb.ModelStreamInferResponse.FromString(failed("malformed", "", "", ""))
    assert bare.error_message == "malformed" and not bare.HasField("infer_response")


@pytest.mark.parametrize(("parameter", "remaining", "wanted"), [
    (None, None, None), (None, 5.0, 5.0), (0.2, None, 0.2), (0.2, 5.0, 0.2), (9.0, 5.0, 5.0)])
def test_the_smaller_of_parameter_and_deadline_wins(parameter: float | None,
                                                    remaining: float | None,
                                                    wanted: float | None) -> None:
    assert deadline(parameter, remaining) == wanted


def request(kind: str = "", value: object = None) -> pb.ModelInferRequest:
    """A request whose `timeout` parameter is `value` in the InferParameter field `kind`."""
    message = pb.ModelInferRequest(model_name="digits", model_version="1", id="r")
    message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    message.raw_input_contents.append(b"timeout" * 8)  # the word in tensor bytes means nothing
    message.parameters["priority"].int64_param = 2
    if kind:
        setattr(message.parameters["timeout"], kind, value)
    return message


@pytest.mark.parametrize("message", [
    request(), request("int64_param", 250_000), request("uint64_param", 7),
    request("int64_param", 1 << 40)])
def test_the_timeout_is_read_as_the_http_transport_reads_it(message: pb.ModelInferRequest) -> None:
    assert infer_fields(message.SerializeToString()) == ("digits", "1", "r", timeout_of(message))


@pytest.mark.parametrize("message", [
    request("int64_param", 0), request("int64_param", -5),
    request("string_param", "1s"), request("double_param", 0.5),
    request("bool_param", True)])
def test_a_timeout_that_is_no_positive_whole_number_is_refused(
        message: pb.ModelInferRequest) -> None:
    with pytest.raises(TensorgateError, match="parameter 'timeout'"):
        infer_fields(message.SerializeToString())
    with pytest.raises(TensorgateError, match="parameter 'timeout'"):
        timeout_of(message)


class FakeContext:
    """A stream's context: `read` hands out the messages then EOF, `write` keeps the answers."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)
        self.written: list[bytes] = []

    async def read(self) -> object:
        return self.messages.pop(0) if self.messages else grpc.aio.EOF

    async def write(self, answer: bytes) -> None:
        self.written.append(answer)

    def time_remaining(self) -> float | None:
        return None


class FakePipeline:
    """Answers later messages sooner, fails one, and records how many ran at once."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.running = self.most = 0

    async def infer(self, call: RequestContext, request: bytes) -> bytes:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            number = int(call.id)
            await asyncio.sleep(0.001 * (self.count - number))
            if number == 5:
                raise invalid_argument("input 'NOPE': expected INPUT0")
            return pb.ModelInferResponse(model_name=call.model, id=call.id).SerializeToString()
        finally:
            self.running -= 1


def test_answers_keep_the_order_asked_while_a_window_of_them_runs_at_once() -> None:
    count = WINDOW * 3
    messages = [pb.ModelInferRequest(model_name="m", id=str(i)).SerializeToString()
                for i in range(count)]
    context, pipeline = FakeContext(messages), FakePipeline(count)
    stream = Stream(pipeline, memory.Trimmer(), context, {})  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(stream.run(), 60))
    answers = [pb.ModelStreamInferResponse.FromString(a) for a in context.written]
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(count)]
    assert [i for i, a in enumerate(answers) if a.error_message] == [5]
    assert "NOPE" in answers[5].error_message
    assert 1 < pipeline.most <= WINDOW
