"""The GPU bench's TorchScript ResNet-50 is the ONNX one: the same weights, the same answers."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import torch

from loadtest.build_resnet import make_model
from loadtest.build_resnet_torch import make_torch_model


def test_the_torchscript_resnet_answers_as_the_onnx_graph() -> None:
    size = 16
    session = ort.InferenceSession(make_model(size).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        module = make_torch_model("resnet50", size, half=False)
    x = np.random.default_rng(6).random((3, 3 * size * size), dtype=np.float32)
    expected = session.run(None, {"INPUT0": x})[0]
    with torch.inference_mode():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (3, 1000)
    assert np.abs(expected).max() > 0.1  # not a model of zeros
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
