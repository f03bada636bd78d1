"""Build the compute-heavy benchmark model ``heavy`` (a ~6.3M-parameter ONNX MLP) into a repository.

Usage: ``python loadtest/build_heavy_model.py OUT_REPO_DIR``; benchmarks call ``build(repo)``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODEL_NAME = "heavy"
LAYERS = (512, 2048, 2048, 512)  # Gemm sizes; ReLU between layers, none after the last
SEED = 0
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR version that introduced opset 17; readable by older runtimes

CONFIG_YAML = """\
# Compute-heavy benchmark model: a 512→2048→2048→512 ReLU MLP with fixed random weights.
max_batch_size: 64
dynamic_batching:
  max_queue_delay_microseconds: 2000
  preferred_batch_size: [64]
  max_queue_size: 4096
  default_timeout_microseconds: 0
instance_count: 1
device: auto
inputs:
  - name: INPUT0
    datatype: FP32
    shape: [512]
outputs:
  - name: OUTPUT0
    datatype: FP32
    shape: [512]
"""


def n_params(layers: tuple[int, ...] = LAYERS) -> int:
    return sum(i * o + o for i, o in pairwise(layers))


def make_model(layers: tuple[int, ...] = LAYERS, seed: int = SEED) -> onnx.ModelProto:
    """Gemm/Relu chain with He-scaled weights from ``default_rng(seed)``; batch dimension N."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[TensorProto] = []
    current = "INPUT0"
    n_layers = len(layers) - 1
    for k, (fan_in, fan_out) in enumerate(pairwise(layers)):
        weight = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        weight *= np.float32(np.sqrt(2.0 / fan_in))
        bias = (0.01 * rng.standard_normal(fan_out)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"fc{k}.weight"),
            numpy_helper.from_array(bias, f"fc{k}.bias"),
        ]
        last = k == n_layers - 1
        gemm_out = "OUTPUT0" if last else f"fc{k}.out"
        nodes.append(
            helper.make_node("Gemm", [current, f"fc{k}.weight", f"fc{k}.bias"], [gemm_out])
        )
        if not last:
            current = f"relu{k}.out"
            nodes.append(helper.make_node("Relu", [gemm_out], [current]))
    graph = helper.make_graph(
        nodes,
        "heavy_mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", layers[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", layers[-1]])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="tensorgate/loadtest/build_heavy_model.py",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Atomically write ``data`` unless ``path`` already holds exactly it; True if written."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def build(repo: Path) -> Path:
    """Create ``repo/heavy/{config.yaml,1/model.onnx}``, skipping files that already match.

    Returns the model directory ``repo/heavy``. Safe to call concurrently (atomic renames).
    """
    model_dir = Path(repo) / MODEL_NAME
    model_bytes = make_model().SerializeToString()
    _write_if_changed(model_dir / "1" / "model.onnx", model_bytes)
    _write_if_changed(model_dir / "config.yaml", CONFIG_YAML.encode("utf-8"))
    return model_dir


def benchmark(
    model_path: Path, batch_sizes: tuple[int, ...] = (1, 64), seconds: float = 2.0
) -> None:
    """Print onnxruntime CPU latency and throughput of the model at each batch size."""
    import onnxruntime as ort  # only needed for the measurement

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in batch_sizes:
        x = rng.standard_normal((batch, LAYERS[0]), dtype=np.float32)
        for _ in range(5):
            session.run(["OUTPUT0"], {"INPUT0": x})
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            session.run(["OUTPUT0"], {"INPUT0": x})
            runs += 1
        ms = 1000.0 * elapsed / runs
        print(
            f"  batch {batch:>3}: {ms:8.3f} ms/batch, {batch * runs / elapsed:10.1f} samples/s "
            f"({runs} runs, onnxruntime {ort.__version__} CPU, {os.cpu_count()} cores)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="model repository directory to build into")
    parser.add_argument("--no-benchmark", action="store_true", help="skip the timing run")
    args = parser.parse_args()
    start = time.perf_counter()
    model_dir = build(args.repo)
    model_path = model_dir / "1" / "model.onnx"
    size_mb = model_path.stat().st_size / 1e6
    print(
        f"{model_dir}: {n_params():,} parameters, model.onnx {size_mb:.1f} MB "
        f"(ready in {time.perf_counter() - start:.2f}s)"
    )
    if not args.no_benchmark:
        benchmark(model_path)


if __name__ == "__main__":
    main()
