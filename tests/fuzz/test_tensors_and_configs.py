"""Fuzz the tensor codecs and model configs: a clean error or a result, never anything else."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from common.datatypes import ALL_DATATYPES
from common.errors import TensorgateError
from common.model_config import ConfigError, load_model_config
from common.proto import grpc_service_pb2 as pb
from common.tensors import (
    MAX_ELEMENTS,
    contents_to_raw,
    count_bytes_elements,
    deserialize_bytes,
    element_count,
    json_to_raw,
    serialize_bytes,
)
from tests.fuzz.strategies import DATATYPES, FUZZ, JSON, SHAPES


@FUZZ
@given(raw=st.binary(max_size=64), lengths=st.lists(st.integers(0, 2**32 - 1), max_size=4))
def test_bytes_with_lying_lengths(raw: bytes, lengths: list[int]) -> None:
    data = b"".join(struct.pack("<I", n) + raw[:8] for n in lengths) + raw
    try:
        items = deserialize_bytes(data, "x")
    except TensorgateError as exc:
        with pytest.raises(TensorgateError, match=exc.message.split(":")[-1].strip()[:20]):
            count_bytes_elements(data, "x")
        return
    assert count_bytes_elements(data, "x") == len(items)
    assert serialize_bytes(items) == data


@FUZZ
@given(shape=SHAPES)
def test_element_count_is_bounded(shape: list[int]) -> None:
    try:
        count = element_count(shape, "x")
    except TensorgateError:
        return
    assert 0 <= count <= MAX_ELEMENTS


@FUZZ
@given(datatype=DATATYPES, shape=SHAPES, data=JSON)
def test_json_to_raw(datatype: str, shape: list[int], data: object) -> None:
    try:
        raw = json_to_raw(datatype, shape, data, "x")
    except TensorgateError as exc:
        assert exc.http_status == 400
        return
    assert len(raw) <= 8 * 64 + 4 * 64


@FUZZ
@given(datatype=st.sampled_from(ALL_DATATYPES), ints=st.lists(st.integers(-(2**31), 2**31 - 1),
       max_size=5), uints=st.lists(st.integers(0, 2**32 - 1), max_size=5),
       big=st.lists(st.integers(0, 2**64 - 1), max_size=3))
def test_contents_to_raw(datatype: str, ints: list[int], uints: list[int], big: list[int]) -> None:
    contents = pb.InferTensorContents(int_contents=ints, uint_contents=uints, uint64_contents=big,
                                      bool_contents=[i > 0 for i in ints],
                                      fp32_contents=[float(i) for i in ints])
    try:
        contents_to_raw(datatype, contents, "x")
    except TensorgateError as exc:
        assert exc.http_status == 400


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.builds(yaml.safe_dump, st.dictionaries(
        st.sampled_from(["name", "backend", "max_batch_size", "dynamic_batching",
                         "instance_count", "device", "inputs", "outputs", "extra"]),
        JSON, max_size=5)),
    st.builds(lambda spec: yaml.safe_dump({"inputs": [spec]}), st.dictionaries(
        st.sampled_from(["name", "datatype", "shape"]), JSON, max_size=3)),
)


def load(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_model_config(path, "m")
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


@FUZZ
@given(text=YAML_TEXT)
def test_model_configs(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    load(tmp_path_factory.mktemp("cfg"), text)


# Found by the fuzzer: each once escaped common/model_config.py as another exception type.
CONFIG_BUGS = {
    "not UTF-8": b"max_batch_size: 1\n# \xff\xfe\n",
    "deeply nested": b"inputs: " + b"[" * 5000 + b"]" * 5000 + b"\n",
}


@pytest.mark.parametrize("name", list(CONFIG_BUGS))
def test_config_bugs_found_by_fuzzing(tmp_path: Path, name: str) -> None:
    load(tmp_path, CONFIG_BUGS[name])


def test_an_alias_bomb_in_a_config_is_refused_without_expanding_it(tmp_path: Path) -> None:
    # 224 bytes of YAML that expand to 590k list items: the error must not echo them all
    # (at 14 levels the same file would ask for gigabytes).
    items = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"&a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 8)]
    path = tmp_path / "config.yaml"
    path.write_text("device: [" + ", ".join(items) + "]\n")
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, "m")
    assert len(str(caught.value)) < 10_000


@pytest.mark.parametrize("datatype", ["FP32", "nope"])
def test_every_datatype_name_is_checked(tmp_path: Path, datatype: str) -> None:
    spec = {"inputs": [{"name": "x", "datatype": datatype, "shape": [2**70, -1]}]}
    load(tmp_path, yaml.safe_dump(spec))
