"""The built-in edge detector network: a small CenterNet over depthwise-separable blocks with a light FPN.

Heads: one class-agnostic objectness heat-map, a softmax class head, box sizes and centre offsets. Keeping
"is there a defect" apart from "which class" means an uncertain class does not split a defect's evidence over
several heat-maps (which lost recall and produced duplicates), and the class head gets a proper softmax.

About 0.13 M parameters; sized so that a 640x640 DeepPCB pair runs at well over 40 images/s on two CPU cores
through ONNX Runtime (see docs/BENCHMARKS.md). Outputs are at stride 4 of the network input.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def separable(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv_bn(in_ch, in_ch, 3, stride, groups=in_ch), conv_bn(in_ch, out_ch, 1))


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = separable(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def stage(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(separable(in_ch, out_ch, stride=2), *[Residual(out_ch) for _ in range(blocks)])


class CenterNetLite(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = (24, 48, 96, 128), neck: int = 64):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.stem = nn.Sequential(conv_bn(3, c1, 3, 2), Residual(c1))  # stride 2
        self.stage4 = stage(c1, c2, 2)  # stride 4: the output resolution
        self.stage8 = stage(c2, c3, 2)
        self.stage16 = stage(c3, c4, 2)
        self.lateral = nn.ModuleList([conv_bn(c, neck, 1) for c in (c2, c3, c4)])
        self.fuse = nn.Sequential(separable(neck, neck), separable(neck, neck))
        self.heat = nn.Sequential(separable(neck, neck), nn.Conv2d(neck, 1, 1))
        self.classes = nn.Sequential(separable(neck, neck), nn.Conv2d(neck, num_classes, 1))
        self.size = nn.Sequential(separable(neck, neck), nn.Conv2d(neck, 2, 1))
        self.offset = nn.Sequential(separable(neck, neck), nn.Conv2d(neck, 2, 1))
        # Focal-loss prior: start every cell at p = 0.01 so early training is not swamped by negatives.
        heat_out = self.heat[-1]
        assert isinstance(heat_out, nn.Conv2d) and heat_out.bias is not None
        nn.init.constant_(heat_out.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return objectness logits (N, 1, h, w), class logits (N, C, h, w), sizes and offsets (N, 2, h, w)."""
        f4 = self.stage4(self.stem(x))
        f8 = self.stage8(f4)
        f16 = self.stage16(f8)
        top = self.lateral[2](f16)
        top = self.lateral[1](f8) + F.interpolate(top, size=f8.shape[-2:], mode="nearest")
        top = self.lateral[0](f4) + F.interpolate(top, size=f4.shape[-2:], mode="nearest")
        features = self.fuse(top)
        return self.heat(features), self.classes(features), self.size(features), self.offset(features)


class ExportWrapper(nn.Module):
    """What the ONNX file computes: objectness reduced to 3x3 local maxima, class probabilities, sizes, offsets."""

    def __init__(self, net: CenterNetLite):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, class_logits, size, offset = self.net(x)
        heat = torch.sigmoid(logits)
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        return peaks, torch.softmax(class_logits, dim=1), size, offset
