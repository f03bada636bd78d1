"""Train the shipped demo model ``digits`` (scikit-learn's 8x8 handwritten digits).

Writes v1 (MLP, ONNX built with onnx.helper), v2 (CNN, TorchScript), accuracies and config.yaml.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
MODEL_DIR = Path(__file__).resolve().parent / "digits"
COMMAND = "python models/train_digits.py"
SPLIT = (
    "sklearn load_digits (1797 samples); train_test_split(test_size=0.25, random_state=0, "
    "stratify=y) -> 1347 train / 450 held-out; pixels / 16.0 as float32"
)
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR version that introduced opset 17; readable by older runtimes

CONFIG_YAML = """\
# The shipped demo model: handwritten digits (8x8 pixels scaled to [0, 1]) → class probabilities.
max_batch_size: 64
dynamic_batching:
  max_queue_delay_microseconds: 500
  preferred_batch_size: [32, 64]
  max_queue_size: 4096
  default_timeout_microseconds: 0
instance_count: 1
device: auto
inputs:
  - name: INPUT0
    datatype: FP32
    shape: [64]
outputs:
  - name: OUTPUT0
    datatype: FP32
    shape: [10]
"""

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Record:
    """What is written to ``digits/<version>/accuracy.json`` and the ACCURACY.md table."""

    version: int
    file: str
    architecture: str
    parameters: int
    heldout_accuracy: float
    n_train: int
    n_test: int
    training: str
    evaluated_with: str
    split: str = SPLIT
    command: str = COMMAND

    def write_json(self) -> None:
        path = MODEL_DIR / str(self.version) / "accuracy.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def seed_everything(seed: int = SEED) -> None:
    """Fix every random source used here so that a rerun reproduces the same weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_split() -> Split:
    """Return ``(x_train, x_test, y_train, y_test)``: pixels / 16.0 as float32, labels int64."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    return x_train, x_test, y_train, y_test


class DigitsMLP(nn.Module):
    """Version 1: 64 → 128 → ReLU → 10, trained on logits; exported with a Softmax."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


class DigitsCNN(nn.Module):
    """Version 2: [N, 64] → [N, 1, 8, 8] → two 3x3 convs → max-pool → 2 dense → softmax [N, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, 1, 8, 8)
        h = torch.relu(self.conv1(h))
        h = self.pool(torch.relu(self.conv2(h)))
        h = torch.relu(self.fc1(h.flatten(1)))
        return self.fc2(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def train(model: DigitsMLP | DigitsCNN, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Minibatch Adam on cross-entropy with a seeded shuffle; returns the final epoch's loss."""
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    epoch_loss = float("nan")
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(xs), generator=generator).split(32):
            optimizer.zero_grad()
            loss = loss_fn(model.logits(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        epoch_loss = total / len(xs)
    model.eval()
    return epoch_loss


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp_to_onnx(model: DigitsMLP) -> onnx.ModelProto:
    """Build Gemm → Relu → Gemm → Softmax by hand from the trained weights (dynamic batch N)."""

    def init(name: str, t: torch.Tensor) -> TensorProto:
        return numpy_helper.from_array(t.detach().numpy().astype(np.float32), name)

    initializers = [
        init("fc1.weight", model.fc1.weight),
        init("fc1.bias", model.fc1.bias),
        init("fc2.weight", model.fc2.weight),
        init("fc2.bias", model.fc2.bias),
    ]
    nodes = [
        helper.make_node("Gemm", ["INPUT0", "fc1.weight", "fc1.bias"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "fc2.weight", "fc2.bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="tensorgate/models/train_digits.py",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out accuracy of the saved ONNX file under onnxruntime (CPU), checking the softmax."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(["OUTPUT0"], {"INPUT0": x})[0]
    assert probs.shape == (len(x), 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    single = session.run(["OUTPUT0"], {"INPUT0": x[:1]})[0]  # dynamic batch: N = 1 works too
    assert np.allclose(single, probs[:1], atol=1e-6)
    return float((probs.argmax(axis=1) == y).mean())


@contextmanager
def quiet_jit() -> Iterator[None]:
    """torch>=2.10 marks torch.jit as deprecated; TorchScript is still the serving format here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        yield


def torchscript_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out accuracy of the saved TorchScript file, loaded back with torch.jit.load."""
    with quiet_jit():
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()
    with torch.inference_mode():
        probs = loaded(torch.from_numpy(x)).numpy()
        single = loaded(torch.from_numpy(x[:1])).numpy()  # any batch size >= 1
    assert probs.shape == (len(x), 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(single, probs[:1], atol=1e-5)
    return float((probs.argmax(axis=1) == y).mean())


def build_v1(split: Split) -> Record:
    """Train the MLP, write ``digits/1/model.onnx`` and return its accuracy record."""
    x_train, x_test, y_train, y_test = split
    seed_everything()
    model = DigitsMLP()
    start = time.perf_counter()
    loss = train(model, x_train, y_train, epochs=60)
    seconds = time.perf_counter() - start
    path = MODEL_DIR / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(mlp_to_onnx(model), str(path))
    acc = onnx_accuracy(path, x_test, y_test)
    print(f"v1 MLP: {seconds:.1f}s training, final loss {loss:.4f}, held-out accuracy {acc:.4f}")
    return Record(
        version=1,
        file="1/model.onnx",
        architecture="MLP 64→128 (ReLU)→10, softmax; ONNX opset 17: Gemm, Relu, Gemm, Softmax",
        parameters=n_params(model),
        heldout_accuracy=round(acc, 4),
        n_train=len(x_train),
        n_test=len(x_test),
        training="torch Adam lr=1e-3 weight_decay=1e-4, batch 32, 60 epochs, seed 0",
        evaluated_with=f"onnxruntime {ort.__version__} (CPUExecutionProvider) on model.onnx",
    )


def build_v2(split: Split) -> Record:
    """Train the CNN, write ``digits/2/model.pt`` (TorchScript) and return its accuracy record."""
    x_train, x_test, y_train, y_test = split
    seed_everything()
    model = DigitsCNN()
    start = time.perf_counter()
    loss = train(model, x_train, y_train, epochs=30)
    seconds = time.perf_counter() - start
    path = MODEL_DIR / "2" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_jit():
        torch.jit.save(torch.jit.script(model), str(path))
    acc = torchscript_accuracy(path, x_test, y_test)
    print(f"v2 CNN: {seconds:.1f}s training, final loss {loss:.4f}, held-out accuracy {acc:.4f}")
    return Record(
        version=2,
        file="2/model.pt",
        architecture="CNN [N,64]→[N,1,8,8], conv3x3 16 (ReLU), conv3x3 32 (ReLU), max-pool 2, "
        "dense 512→64 (ReLU)→10, softmax; TorchScript (torch.jit.script)",
        parameters=n_params(model),
        heldout_accuracy=round(acc, 4),
        n_train=len(x_train),
        n_test=len(x_test),
        training="torch Adam lr=1e-3 weight_decay=1e-4, batch 32, 30 epochs, seed 0",
        evaluated_with=f"torch {torch.__version__}: torch.jit.load + inference_mode on model.pt",
    )


def write_accuracy_md(records: list[Record]) -> None:
    lines = [
        "# digits — held-out accuracy",
        "",
        "| version | file | architecture | parameters | held-out accuracy |",
        "|---|---|---|---:|---:|",
    ]
    for r in records:
        correct = round(r.heldout_accuracy * r.n_test)
        lines.append(
            f"| {r.version} | `{r.file}` | {r.architecture} | {r.parameters:,} | "
            f"{r.heldout_accuracy:.2%} ({correct}/{r.n_test}) |"
        )
    lines += [
        "",
        f"Split: {SPLIT}.",
        "",
        f"Produced by `{COMMAND}` (seed 0, CPU, one thread; takes well under a minute).",
        "",
    ]
    (MODEL_DIR / "ACCURACY.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    total_start = time.perf_counter()
    torch.set_num_threads(1)  # a fixed thread count keeps float reductions reproducible
    split = load_split()
    print(f"digits: {len(split[0])} train / {len(split[1])} held-out samples")
    records = [build_v1(split), build_v2(split)]
    for r in records:
        r.write_json()
    write_accuracy_md(records)
    (MODEL_DIR / "config.yaml").write_text(CONFIG_YAML, encoding="utf-8")
    print(f"wrote {MODEL_DIR} in {time.perf_counter() - total_start:.1f}s")
    failed = [r.version for r in records if r.heldout_accuracy <= 0.95]
    if failed:
        raise SystemExit(f"held-out accuracy not above 95 % for version(s) {failed}")


if __name__ == "__main__":
    main()
