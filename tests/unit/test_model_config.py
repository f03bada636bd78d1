"""Model configs: the shipped one parses; every kind of mistake names the file, key and choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.model_config import DEFAULT_MAX_QUEUE_SIZE, ConfigError, load_model_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_shipped_digits_config_parses() -> None:
    config = load_model_config(ROOT / "models" / "digits" / "config.yaml", "digits")
    assert config.max_batch_size == 64
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.inputs is not None and config.inputs[0].shape == (64,)


def test_a_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_model_config(tmp_path / "config.yaml", "m")
    assert config.max_batch_size == 0 and config.dynamic_batching is None
    assert config.device == "auto" and config.instance_count == 1


def test_zero_queue_size_means_the_default_bound(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, "dynamic_batching: {max_queue_size: 0}\n"), "m")
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.max_queue_size == DEFAULT_MAX_QUEUE_SIZE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: -1\n", "key 'max_batch_size': expected an integer >= 0, got -1"),
        ("max_batch_size: many\n", "key 'max_batch_size': expected an integer >= 0"),
        ("device: gpu\n", "key 'device': expected auto | cpu | cuda:N, got 'gpu'"),
        ("instance_count: 0\n", "key 'instance_count': expected an integer >= 1"),
        ("batch_size: 4\n", "unknown key 'batch_size'; allowed keys: name, backend"),
        ("dynamic_batching: {delay: 5}\n", "unknown key 'dynamic_batching.delay'"),
        ("dynamic_batching: {preferred_batch_size: [0]}\n",
         "key 'dynamic_batching.preferred_batch_size': expected a list of integers >= 1"),
        ("inputs: [{name: x, datatype: FLOAT, shape: [1]}]\n",
         "key 'inputs[0].datatype': expected BOOL | UINT8"),
        ("inputs: [{name: x, datatype: FP32, shape: [0]}]\n",
         "key 'inputs[0].shape': expected a list of dimensions"),
        ("name: other\n", "key 'name': expected the model's name"),
        ("backend: tensorflow\n", "key 'backend': expected onnx | torch"),
        ("[1, 2]\n", "expected a mapping of keys at the top level"),
        ("max_batch_size: [\n", "not valid YAML"),
    ],
)
def test_mistakes_name_file_key_and_what_is_allowed(tmp_path: Path, text: str,
                                                    message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, "m")
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
