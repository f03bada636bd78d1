"""Build ``resnet50``: ResNet-50 (v1.5, 25.6M parameters) as ONNX with fixed random weights.

Usage: ``python -m loadtest.build_resnet OUT_REPO_DIR [--size 224]``; benchmarks call ``build``.
The input is a flat row (3·size·size floats) reshaped inside the graph, so the benchmark's
one-row requests fit it unchanged; ``--size 224`` gives the usual 4.1 GMAC per image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from loadtest.build_heavy_model import ONNX_IR_VERSION, ONNX_OPSET, _write_if_changed

MODEL_NAME = "resnet50"
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # width, blocks, first stride
CLASSES = 1000
SEED = 0
#: Scales each residual branch's last convolution: without batch norm, random He weights
#: would double the activations' variance at every block.
BRANCH_SCALE = 0.2

CONFIG_YAML = """\
# Compute-heavy benchmark model: ResNet-50 on {size}x{size} images, fixed random weights.
# The input is the flattened 3x{size}x{size} image; the graph reshapes it.
# Batches of at most 32 rows: the queue of a busy server is shared by both instances instead
# of one taking 64 rows (twice its batch time) while the other idles, which set the tail.
max_batch_size: 32
dynamic_batching:
  max_queue_delay_microseconds: 2000
  preferred_batch_size: [32]
  max_queue_size: 4096
  default_timeout_microseconds: 0
instance_count: 2
device: auto
inputs:
  - name: INPUT0
    datatype: FP32
    shape: [{width}]
outputs:
  - name: OUTPUT0
    datatype: FP32
    shape: [{classes}]
"""


class _Graph:
    """Accumulates nodes and weights; each helper returns the name of its output."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1,
             relu: bool = True, scale: float = 1.0) -> str:
        w = self.rng.standard_normal((c_out, c_in, k, k), dtype=np.float32)
        w *= np.float32(scale * np.sqrt(2.0 / (c_in * k * k)))
        wn, bn, out = self.name("w"), self.name("b"), self.name("conv")
        self.weights += [numpy_helper.from_array(w, wn),
                         numpy_helper.from_array(np.zeros(c_out, np.float32), bn)]
        self.nodes.append(helper.make_node("Conv", [x, wn, bn], [out], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        return self.relu(out) if relu else out

    def relu(self, x: str) -> str:
        out = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    def bottleneck(self, x: str, c_in: int, width: int, stride: int) -> str:
        y = self.conv(x, c_in, width, 1)
        y = self.conv(y, width, width, 3, stride)
        y = self.conv(y, width, width * 4, 1, relu=False, scale=BRANCH_SCALE)
        shortcut = x
        if stride != 1 or c_in != width * 4:
            shortcut = self.conv(x, c_in, width * 4, 1, stride, relu=False)
        out = self.name("add")
        self.nodes.append(helper.make_node("Add", [y, shortcut], [out]))
        return self.relu(out)


def make_passthrough(size: int = 64) -> onnx.ModelProto:
    """ResNet-50's inputs and outputs with next to no compute (the first CLASSES values of each
    row): what the serving path alone carries for requests of this size."""
    bounds = [numpy_helper.from_array(np.array([v], np.int64), name)
              for name, v in (("starts", 0), ("ends", CLASSES), ("axes", 1))]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["INPUT0", "starts", "ends", "axes"], ["OUTPUT0"])],
        "passthrough",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", 3 * size * size])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", CLASSES])],
        bounds)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="tensorgate/loadtest/build_resnet.py",
                              ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def make_model(size: int = 64, seed: int = SEED) -> onnx.ModelProto:
    g = _Graph(seed)
    shape = numpy_helper.from_array(np.array([-1, 3, size, size], np.int64), "image_shape")
    g.weights.append(shape)
    g.nodes.append(helper.make_node("Reshape", ["INPUT0", "image_shape"], ["image"]))
    x = g.conv("image", 3, 64, 7, 2)
    g.nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c_in = "pool", 64
    for width, blocks, stride in STAGES:
        for block in range(blocks):
            x = g.bottleneck(x, c_in, width, stride if block == 0 else 1)
            c_in = width * 4
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    g.nodes.append(helper.make_node("Flatten", ["gap"], ["features"]))
    fc = g.rng.standard_normal((c_in, CLASSES), dtype=np.float32) * np.float32(1 / np.sqrt(c_in))
    g.weights += [numpy_helper.from_array(fc, "fc.weight"),
                  numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.bias")]
    g.nodes.append(helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["OUTPUT0"]))
    graph = helper.make_graph(
        g.nodes, "resnet50",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", 3 * size * size])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", CLASSES])],
        g.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="tensorgate/loadtest/build_resnet.py",
                              ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def build(repo: Path, size: int = 64) -> Path:
    """Create ``repo/resnet50/{config.yaml,1/model.onnx}``, skipping files that already match."""
    model_dir = Path(repo) / MODEL_NAME
    _write_if_changed(model_dir / "1" / "model.onnx", make_model(size).SerializeToString())
    config = CONFIG_YAML.format(size=size, width=3 * size * size, classes=CLASSES)
    _write_if_changed(model_dir / "config.yaml", config.encode())
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="model repository directory to build into")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (64)")
    args = parser.parse_args()
    start = time.perf_counter()
    model_dir = build(args.repo, args.size)
    size_mb = (model_dir / "1" / "model.onnx").stat().st_size / 1e6
    print(f"{model_dir}: model.onnx {size_mb:.1f} MB, {args.size}x{args.size} input "
          f"(ready in {time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
