"""The classification extension's checks and its answer's encoding, on a fake model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from common.errors import TensorgateError
from common.model_config import ConfigError, TensorSpec
from common.proto import grpc_service_pb2 as pb
from common.tensors import text_elements
from runtime.classify import check_labels, class_count, top_k
from runtime.executor import Output


def _model(batched: bool = True) -> SimpleNamespace:
    return SimpleNamespace(label="model 'm' version 1", batched=batched,
                           full_shape=lambda spec: [-1, *spec.shape] if batched else spec.shape)


def _params(**values: int | str) -> object:
    output = pb.ModelInferRequest.InferRequestedOutputTensor(name="out")
    for key, value in values.items():
        if isinstance(value, int):
            output.parameters[key].int64_param = value
        else:
            output.parameters[key].string_param = value
    return output.parameters


@pytest.mark.parametrize(("spec", "params", "refusal"), [
    (TensorSpec("out", "BYTES", (4,)), {"classification": 2}, "numeric output, not BYTES"),
    (TensorSpec("out", "FP32", (2, 2)), {"classification": 2}, "shape [batch, N], not"),
    (TensorSpec("out", "FP32", (4,)), {"classification": 0}, "must be 1 to 4 classes, got 0"),
    (TensorSpec("out", "FP32", (4,)), {"classification": "2"}, "an integer class count"),
    (TensorSpec("out", "FP32", (4,)), {"top": 2}, "unsupported output parameter(s) ['top']"),
])
def test_what_does_not_fit_is_refused_by_name(spec: TensorSpec, params: dict,
                                               refusal: str) -> None:
    with pytest.raises(TensorgateError) as caught:
        class_count(_model(), spec, _params(**params))
    assert refusal in caught.value.message
    assert "output 'out'" in caught.value.message


def test_top_k_per_row_best_first_ties_by_lower_index() -> None:
    scores = np.array([[0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.5, 0.0]], np.float32)
    out = top_k(Output("out", "FP32", scores.shape, scores.tobytes()), 2, ("a", "b", "c"), True)
    assert (out.datatype, out.shape) == ("BYTES", (2, 2))
    assert text_elements(out.raw, "out") == [
        "0.700000:1:b", "0.100000:0:a", "0.500000:2:c", "0.250000:0:a"]


def test_integer_scores_unbatched_and_a_class_past_the_labels() -> None:
    scores = np.array([3, 9, 5, 1], np.int32)
    out = top_k(Output("out", "INT32", scores.shape, scores.tobytes()), 3, ("a",), False)
    assert out.shape == (3,)
    assert text_elements(out.raw, "out") == ["9:1", "5:2", "3:0:a"]


def test_fewer_labels_than_classes_fails_the_load() -> None:
    with pytest.raises(ConfigError, match="model 'm': output 'out' has 4 classes but 3 labels"):
        check_labels("m", (TensorSpec("out", "FP32", (4,)),), (("out", ("a", "b", "c")),))
    with pytest.raises(ConfigError, match="labels given for output 'other'"):
        check_labels("m", (TensorSpec("out", "FP32", (4,)),), (("other", ("a",)),))
