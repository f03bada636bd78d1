"""`precision` and `optimization` (TensorRT, CUDA graphs, channels_last) in both config formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.model_config import ConfigError, load_model_config
from common.model_spec import Accelerator, Optimization
from common.pbtxt import parse_pbtxt

TRT_YAML = """\
precision: bf16
optimization:
  execution_accelerators:
    gpu: [{name: tensorrt, parameters: {precision_mode: fp16, max_workspace_size_bytes: 1024,
                                        trt_engine_cache_enable: false}}]
  cuda: {graphs: true, channels_last: false}
"""
TRT_PBTXT = """\
optimization { execution_accelerators { gpu_execution_accelerator: [ {
  name: "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "max_workspace_size_bytes" value: "1024" }
  parameters { key: "trt_engine_cache_enable" value: "0" }
} ] }
cuda { graphs: true } }
"""
TENSORRT = Accelerator("tensorrt", (("max_workspace_size_bytes", "1024"),
                                    ("precision_mode", "FP16"),
                                    ("trt_engine_cache_enable", "false")))


def yaml_config(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_model_config(path, "m")


def test_defaults_run_the_model_as_it_is(tmp_path: Path) -> None:
    config = yaml_config(tmp_path, "max_batch_size: 4\n")
    assert config.precision == "fp32"
    assert config.optimization == Optimization((), False, None)


def test_yaml_reads_precision_tensorrt_and_cuda_keys(tmp_path: Path) -> None:
    config = yaml_config(tmp_path, TRT_YAML)
    assert config.precision == "bf16"
    assert config.optimization == Optimization((TENSORRT,), True, False)


def test_pbtxt_reads_the_same_accelerator_in_tritons_spelling() -> None:
    config, unsupported = parse_pbtxt(TRT_PBTXT, Path("/repo/m/config.pbtxt"), "m")
    assert unsupported == []
    assert config.optimization == Optimization((TENSORRT,), True, None)
    assert config.precision == "fp32"


@pytest.mark.parametrize(("text", "message"), [
    ("precision: fp8\n", "key 'precision': expected fp32 | fp16 | bf16, got 'fp8'"),
    ("precision: 16\n", "key 'precision': expected fp32 | fp16 | bf16, got 16"),
    ("optimization: {graph: {level: 1}}\n",
     "unknown key 'optimization.graph'; allowed keys: optimization.execution_accelerators"),
    ("optimization: {execution_accelerators: {gpu: [{name: openvino}]}}\n",
     "key 'optimization.execution_accelerators.gpu[0].name': expected tensorrt, got 'openvino'"),
    ("optimization: {execution_accelerators: {cpu: []}}\n",
     "unknown key 'optimization.execution_accelerators.cpu'"),
    ("optimization: {execution_accelerators: {gpu: [{name: tensorrt, parameters: "
     "{precision_mode: INT8}}]}}\n", "parameters.precision_mode': expected FP32 | FP16"),
    ("optimization: {execution_accelerators: {gpu: [{name: tensorrt, parameters: "
     "{trt_engine_cache_path: /tmp}}]}}\n", "caches TensorRT engines in its own cache folder"),
    ("optimization: {execution_accelerators: {gpu: [{name: tensorrt, parameters: "
     "{min_subgraph_size: 3}}]}}\n", "allowed keys: optimization.execution_accelerators.gpu[0]"
                                     ".parameters.precision_mode"),
    ("optimization: {cuda: {graphs: yes please}}\n",
     "key 'optimization.cuda.graphs': expected true | false"),
])
def test_yaml_mistakes_name_the_key_and_what_is_allowed(tmp_path: Path, text: str,
                                                        message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        yaml_config(tmp_path, text)
    assert message in str(caught.value)


def test_pbtxt_mistakes_name_the_field() -> None:
    text = ('optimization { execution_accelerators { gpu_execution_accelerator: [ '
            '{ name: "tensorrt", parameters { key: "precision_mode" value: "INT8" } } ] } }')
    with pytest.raises(ConfigError, match=r"gpu_execution_accelerator\[0\]\.parameters"
                                          r"\.precision_mode': expected FP32 \| FP16"):
        parse_pbtxt(text, Path("/repo/m/config.pbtxt"), "m")


def test_pbtxt_optimization_fields_not_read_are_still_reported() -> None:
    _, unsupported = parse_pbtxt(
        'optimization { execution_accelerators { cpu_execution_accelerator: [ '
        '{ name: "openvino" } ] }, input_pinned_memory { enable: true } }',
        Path("/repo/m/config.pbtxt"), "m")
    assert unsupported == ["optimization.execution_accelerators.cpu_execution_accelerator",
                           "optimization.input_pinned_memory"]
