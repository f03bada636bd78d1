"""ResNet-50 as a PyTorch module with the very weights of ``loadtest.build_resnet``'s ONNX graph
(the same seeded generator, drawn in the same order): both backends serve one model.

The input is the same flat row (3·size·size values) reshaped inside the module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from loadtest.build_resnet import BRANCH_SCALE, CLASSES, SEED, STAGES


class Bottleneck(nn.Module):
    def __init__(self, convs: list[nn.Conv2d], shortcut: nn.Conv2d | None) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = convs
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(self.conv3(y) + self.shortcut(x))


class ResNet50(nn.Module):
    def __init__(self, size: int = 64, seed: int = SEED) -> None:
        super().__init__()
        self.size = size
        rng = np.random.default_rng(seed)
        self.stem = _conv(rng, 3, 64, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, c_in = [], 64
        for width, count, stride in STAGES:
            for block in range(count):
                step = stride if block == 0 else 1
                # Drawn in build_resnet's order: the branch's three convolutions, then the
                # shortcut's.
                convs = [_conv(rng, c_in, width, 1), _conv(rng, width, width, 3, step),
                         _conv(rng, width, width * 4, 1, scale=BRANCH_SCALE)]
                shortcut = None
                if step != 1 or c_in != width * 4:
                    shortcut = _conv(rng, c_in, width * 4, 1, step)
                blocks.append(Bottleneck(convs, shortcut))
                c_in = width * 4
        self.blocks = nn.Sequential(*blocks)
        fc = rng.standard_normal((c_in, CLASSES), dtype=np.float32) * np.float32(1 / np.sqrt(c_in))
        self.fc = nn.Linear(c_in, CLASSES)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(fc.T.copy()))
            self.fc.bias.zero_()

    def forward(self, row: torch.Tensor) -> torch.Tensor:
        x = row.reshape(-1, 3, self.size, self.size)
        x = self.blocks(self.pool(torch.relu(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class Passthrough(nn.Module):
    """The first CLASSES values of each row: the serving path with next to no compute."""

    def __init__(self) -> None:
        super().__init__()
        self.classes = CLASSES  # TorchScript reads no module globals

    def forward(self, row: torch.Tensor) -> torch.Tensor:
        return row[:, :self.classes].clone()


def _conv(rng: np.random.Generator, c_in: int, c_out: int, k: int, stride: int = 1,
          scale: float = 1.0) -> nn.Conv2d:
    w = rng.standard_normal((c_out, c_in, k, k), dtype=np.float32)
    w *= np.float32(scale * np.sqrt(2.0 / (c_in * k * k)))
    conv = nn.Conv2d(c_in, c_out, k, stride, padding=k // 2)
    assert conv.bias is not None
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        conv.bias.zero_()
    return conv


def make_torch_model(model: str, size: int, half: bool) -> torch.jit.ScriptModule:
    """The named model (resnet50 or passthrough) as TorchScript, in float16 when `half`."""
    module = ResNet50(size) if model == "resnet50" else Passthrough()
    module.eval()
    if half:
        module.half()
    scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted
