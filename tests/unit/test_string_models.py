"""String (BYTES) models in-process: the executor feeds ONNX Runtime and TorchScript text, a
batch of requests comes back split and byte-identical, and such models pass validation."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from common.model_config import ModelConfig, TensorSpec
from common.tensors import deserialize_bytes, serialize_bytes
from runtime.backends.base import Backend
from runtime.backends.onnx import OnnxBackend
from runtime.backends.torch import TorchBackend
from runtime.batcher import Pending
from runtime.executor import Staging, execute
from runtime.warmup import validate

SPECS = (TensorSpec("INPUT0", "BYTES", (2,)),), (TensorSpec("OUTPUT0", "BYTES", (2,)),)


class Quote(torch.nn.Module):
    def forward(self, words: list[str]) -> list[str]:
        return ["<" + word + ">" for word in words]


def onnx_echo(folder: Path) -> tuple[Backend, ModelConfig]:
    x = helper.make_tensor_value_info("INPUT0", TensorProto.STRING, [None, 2])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "echo",
                              [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    config = ModelConfig("echo", folder / "config.yaml", max_batch_size=8, device="cpu")
    return OnnxBackend(folder / "model.onnx", config, 1), config


def torch_quote(folder: Path) -> tuple[Backend, ModelConfig]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's own
        torch.jit.script(Quote()).save(str(folder / "model.pt"))
    config = ModelConfig("quote", folder / "config.yaml", max_batch_size=8, device="cpu",
                         inputs=SPECS[0], outputs=SPECS[1])
    return TorchBackend(folder / "model.pt", config, 1), config


def pending(rows: list[list[bytes]]) -> Pending:
    return Pending(inputs=[serialize_bytes(v for row in rows for v in row)],
                   shapes=[(len(rows), 2)], batch_size=len(rows), shape_key=((2,),),
                   arrival=0.0, deadline=None, future=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("build", "wrap"), [(onnx_echo, lambda v: v),
                                             (torch_quote, lambda v: b"<" + v + b">")])
def test_probe_08_a_batch_of_string_requests_comes_back_byte_identical(
        tmp_path: Path, build: Callable[[Path], tuple[Backend, ModelConfig]],
        wrap: Callable[[bytes], bytes]) -> None:
    backend, config = build(tmp_path)
    first = [[b"hello", "h\u00e9llo".encode()]]
    second = [[b"", b"a\x00b"], ["\u2603".encode(), b"b'x'"]]
    result = execute(backend, True, [pending(first), pending(second)], Staging(8))
    for rows, outputs in zip((first, second), result.outputs):
        (out,) = outputs
        assert (out.datatype, out.shape) == ("BYTES", (len(rows), 2))
        assert deserialize_bytes(out.raw, "y") == [wrap(v) for row in rows for v in row]
    validate(backend, config)  # string models can be registered and hot-swapped
