"""Model registry.

``make_model(name, input_shape, num_classes)`` builds a fresh model; initialisation is
deterministic under ``torch.manual_seed`` (the caller seeds). ``input_shape`` is ``(C, H, W)`` for
images (``(F,)`` also works for ``softmax`` and ``mlp``).

Design choices that matter to the rest of the system:

- **No buffers, no randomness in forward.** The flat parameter vector is the whole model state, so
  the server, every worker process and both transports agree on it. Hence
  ``nn.BatchNorm2d(c, track_running_stats=False)`` (batch statistics at train *and* eval time) in
  the ResNets, GroupNorm in VGG-11, and no dropout anywhere (dropout would make the vmap and loop
  paths, and different processes, disagree).
- Every model works with ``torch.func.functional_call`` + ``vmap(grad(...))`` over a leading
  worker dimension. :data:`FAST_PATH` names the gradient path that is fastest per model on CPU.
- BatchNorm with batch statistics needs more than one value per channel: ResNets on tiny inputs
  (e.g. 8x8 digits) need batches of at least 2.
"""

from __future__ import annotations

import math
from typing import Callable

import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError, unknown_name


def _features(input_shape) -> int:
    return int(math.prod(int(s) for s in input_shape))


def _image_shape(name: str, input_shape) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"model {name} needs image input (C, H, W), got input shape "
                          f"{tuple(input_shape)}; use softmax or mlp")
    return tuple(int(s) for s in input_shape)


# --------------------------------------------------------------------------------------------
# dense models

def softmax_regression(input_shape, num_classes: int) -> nn.Module:
    """Softmax regression (Flatten + Linear), initialised at zero as in the DiverseFL paper."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), num_classes))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    return model


def mlp(input_shape, num_classes: int, hidden: int = 200) -> nn.Module:
    """The 2x200 ReLU MLP (PyTorch default init)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_features(input_shape), hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn(input_shape, num_classes: int) -> nn.Module:
    """Small MNIST CNN of the bucketing experiments, without dropout.

    Conv(C,32,3) ReLU Conv(32,64,3) ReLU MaxPool(2) Flatten Linear(.,128) ReLU Linear(128,C).
    The convolutions are unpadded for inputs of at least 6x6 (the original network) and use
    padding 1 for smaller inputs; the flattened size is computed from ``input_shape``.
    """
    c, h, w = _image_shape("cnn", input_shape)
    pad = 0 if min(h, w) >= 6 else 1
    oh, ow = h - 4 + 4 * pad, w - 4 + 4 * pad
    oh, ow = oh // 2, ow // 2
    if oh < 1 or ow < 1:
        raise ConfigError(f"model cnn: input {tuple(input_shape)} is too small")
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, 1, padding=pad), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, padding=pad), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * oh * ow, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


# --------------------------------------------------------------------------------------------
# ResNets (BatchNorm with batch statistics only: no buffers)

def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, track_running_stats=False)


class _ShortcutA(nn.Module):
    """Option-A shortcut of He et al.: subsample spatially and zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.extra = planes - in_planes

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """3x3-3x3 residual block. ``shortcut='A'`` (parameter-free) or ``'B'`` (1x1 conv + BN)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _ShortcutA(in_planes, planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), _bn(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (no max-pool), stages of BasicBlocks, global average pool.

    Uses ``BatchNorm2d(track_running_stats=False)``: batch statistics at train and eval time, so
    the model has no buffers and its flat parameter vector is its whole state.
    """

    def __init__(self, in_channels: int, num_classes: int, widths, blocks, shortcut: str,
                 kaiming_init: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = _bn(widths[0])
        layers, in_planes = [], widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(n):
                stage.append(BasicBlock(in_planes, planes, stride if b == 0 else 1, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(in_planes, num_classes)
        if kaiming_init:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(input_shape, num_classes: int) -> nn.Module:
    """ResNet-20 of He et al. (3 stages x 3 blocks, 16/32/64 channels, option-A shortcuts,
    Kaiming-normal init; ~0.27M parameters for 10 classes)."""
    c, _, _ = _image_shape("resnet20", input_shape)
    return ResNet(c, num_classes, (16, 32, 64), (3, 3, 3), shortcut="A", kaiming_init=True)


def resnet18(input_shape, num_classes: int) -> nn.Module:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool, 64-128-256-512, 1x1-conv shortcuts;
    ~11.2M parameters for 10 classes)."""
    c, _, _ = _image_shape("resnet18", input_shape)
    return ResNet(c, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), shortcut="B")


# --------------------------------------------------------------------------------------------
# VGG-11 with GroupNorm

_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11(input_shape, num_classes: int) -> nn.Module:
    """VGG-11 with GroupNorm (16 channels per group), Glorot-uniform init and zero biases.

    For 32x32 inputs the five max-pools leave 1x1x512 and the classifier is Linear(512, C).
    A max-pool is skipped once the feature map is already 1 pixel wide, and an adaptive average
    pool to 1x1 precedes the classifier, so smaller inputs (28x28, 8x8) work too.
    """
    c, h, w = _image_shape("vgg11", input_shape)
    layers: list[nn.Module] = []
    in_c = c
    for v in _VGG11:
        if v == "M":
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            continue
        layers += [nn.Conv2d(in_c, v, 3, padding=1), nn.GroupNorm(max(1, v // 16), v), nn.ReLU()]
        in_c = v
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_c, num_classes))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# --------------------------------------------------------------------------------------------
# registry

#: name -> builder(input_shape, num_classes) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {
    "softmax": softmax_regression,
    "mlp": mlp,
    "cnn": cnn,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "vgg11": vgg11,
}

#: The gradient path ``--grad-path auto`` takes per model (:mod:`common.compute.paths`;
#: ``bench/rounds.py --part paths`` measures them on this CPU): the one-pass linear path for
#: models made of Linear layers, a per-worker loop for convolutional ones.
FAST_PATH: dict[str, str] = {"softmax": "linear", "mlp": "linear", "cnn": "loop",
                             "resnet20": "loop", "resnet18": "loop", "vgg11": "loop"}


def model_names() -> list[str]:
    """Every registered model name, in registration order."""
    return list(MODELS)


def register_model(name: str, builder: Callable[..., nn.Module], grad_path: str = "loop") -> None:
    """Register ``builder(input_shape, num_classes) -> nn.Module`` as ``--model name`` (plugins).

    The model must follow the rules at the top of this module (no buffers, no randomness in
    forward); ``grad_path`` is what ``--grad-path auto`` uses for it (linear, vmap or loop)."""
    key = str(name).strip().lower()
    if key in MODELS and MODELS[key] is not builder:
        raise ValueError(f"model '{key}' is already registered")
    MODELS[key] = builder
    FAST_PATH[key] = grad_path


def make_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (without batch dim) and ``num_classes``."""
    key = str(name).strip().lower()
    if key not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[key](tuple(int(s) for s in input_shape), int(num_classes))
