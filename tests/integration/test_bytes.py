"""BYTES end to end: string models (ONNX Identity, TorchScript List[str]) through the gateway
and the runtime with tritonclient over gRPC, HTTP binary and HTTP JSON."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Background, Servers

TEXT = np.array([[b"hello", "h\u00e9llo \u2603".encode()], [b"", b"a\x00b"]], dtype=object)
NOT_UTF8 = np.array([[b"hello", b"\xff\xfe"]], dtype=object)


class Quote(torch.nn.Module):
    """Each word in brackets: a bytes object passed as str would show as `<b'...'>`."""

    def forward(self, words: list[str]) -> list[str]:
        return ["<" + word + ">" for word in words]


def build_repository(root: Path) -> Path:
    """`echo`: an ONNX Identity on a [N, 2] string tensor; `quote`: TorchScript, List[str]."""
    x = helper.make_tensor_value_info("INPUT0", TensorProto.STRING, [None, 2])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "echo",
                              [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "config.yaml").write_text("max_batch_size: 8\n")
    onnx.save(model, str(root / "echo" / "1" / "model.onnx"))
    (root / "quote" / "1").mkdir(parents=True)
    (root / "quote" / "config.yaml").write_text(
        "max_batch_size: 8\n"
        "inputs: [{name: INPUT0, datatype: BYTES, shape: [2]}]\n"
        "outputs: [{name: OUTPUT0, datatype: BYTES, shape: [2]}]\n")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's own
        torch.jit.script(Quote()).save(str(root / "quote" / "1" / "model.pt"))
    return root


@pytest.fixture(scope="module")
def strings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with Background(build_repository(tmp_path_factory.mktemp("strings"))) as running:
        yield running


def grpc_infer(url: str, model: str, data: np.ndarray) -> np.ndarray:
    client = tgrpc.InferenceServerClient(url)
    tensor = tgrpc.InferInput("INPUT0", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor]).as_numpy("OUTPUT0")


def http_infer(url: str, model: str, data: np.ndarray, binary: bool) -> np.ndarray:
    client = thttp.InferenceServerClient(url)
    tensor = thttp.InferInput("INPUT0", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    wanted = [thttp.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client.infer(model, [tensor], outputs=wanted)
    assert ("data" in result.get_response()["outputs"][0]) is not binary
    return result.as_numpy("OUTPUT0")


def same(got: np.ndarray, expected: np.ndarray) -> bool:
    """Equal shapes and byte-identical elements (JSON answers come back as str)."""
    as_bytes = [v.encode() if isinstance(v, str) else bytes(v) for v in got.reshape(-1)]
    return got.shape == expected.shape and as_bytes == list(expected.reshape(-1))


def test_probe_08_onnx_strings_come_back_byte_identical_over_every_path(
        strings: Servers) -> None:
    assert same(grpc_infer(strings.gateway_grpc, "echo", TEXT), TEXT)
    assert same(grpc_infer(strings.runtime_grpc, "echo", TEXT), TEXT)
    assert same(http_infer(strings.gateway_http, "echo", TEXT, binary=True), TEXT)
    assert same(http_infer(strings.gateway_http, "echo", TEXT, binary=False), TEXT)


def test_probe_08_torchscript_gets_text_as_list_of_str(strings: Servers) -> None:
    quoted = np.array([[b"<" + v + b">" for v in row] for row in TEXT], dtype=object)
    assert same(grpc_infer(strings.gateway_grpc, "quote", TEXT), quoted)
    assert same(http_infer(strings.gateway_http, "quote", TEXT, binary=True), quoted)


@pytest.mark.parametrize("model", ["echo", "quote"])
def test_probe_08_bytes_that_are_not_text_are_refused_by_element(strings: Servers,
                                                                 model: str) -> None:
    for call in (lambda: grpc_infer(strings.gateway_grpc, model, NOT_UTF8),
                 lambda: http_infer(strings.gateway_http, model, NOT_UTF8, binary=True)):
        with pytest.raises(InferenceServerException) as caught:
            call()
        status = str(caught.value.status())
        assert status in ("StatusCode.INVALID_ARGUMENT", "400"), status
        assert "BYTES element 1 is not UTF-8 text (byte 0xff" in caught.value.message()
        assert "INPUT0" in caught.value.message()
    # The runtime is still serving, and a good request right after is answered exactly.
    assert grpc_infer(strings.gateway_grpc, "echo", TEXT).shape == TEXT.shape
