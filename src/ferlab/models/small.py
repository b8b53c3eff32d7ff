"""CNNs designed for 48x48 grayscale faces, trained from scratch."""

from __future__ import annotations

import torch
from torch import nn

from ..config import as_whole
from . import register_model


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGGNet(nn.Module):
    """VGG-style: stages of ``depth`` conv-BN-ReLU then max-pool (48->24->12->6->3), GAP.

    ``depth`` is one number for every stage or one per stage.

    ``stem_stride=2`` makes the first convolution stride 2, so the stages run at 24, 12, 6
    and 3 pixels for a quarter of the compute; the last pool is then dropped (a 2x2 pool of
    a 3x3 map would ignore a row and a column) and GAP reads the 3x3 map.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        depth: int | tuple[int, ...] = 2,
        num_classes: int = 7,
        dropout: float = 0.3,
        stem_stride: int = 1,
    ):
        super().__init__()
        depths = _per_stage("depth", depth, len(widths))
        layers: list[nn.Module] = []
        cin = 1
        for s, (w, d) in enumerate(zip(widths, depths, strict=True)):
            for i in range(d):
                first = s == 0 and i == 0
                layers += _conv_bn(cin if i == 0 else w, w, stem_stride if first else 1)
            if stem_stride == 1 or s < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def _per_stage(name: str, value: int | tuple[int, ...], stages: int) -> tuple[int, ...]:
    """A count per stage (one whole number >= 1 for all, or one each), else one line."""
    counts = [as_whole(n) for n in (value if isinstance(value, list | tuple) else [value] * stages)]
    if len(counts) != stages or any(n is None or n < 1 for n in counts):
        raise ValueError(
            f"{name} {value!r}: expected a whole number >= 1, or one per stage ({stages})"
        )
    return tuple(counts)  # type: ignore[arg-type]


class ResNet(nn.Module):
    """A narrow ResNet for 48x48: 3x3 stem, stages at 48, 24, 12, 6 pixels, GAP."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 7,
        dropout: float = 0.2,
    ):
        super().__init__()
        blocks = _per_stage("blocks", blocks, len(widths))
        layers: list[nn.Module] = [*_conv_bn(1, widths[0])]
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def vggnet(num_classes: int = 7, widths: tuple[int, ...] = (64, 128, 256, 512), **kw) -> nn.Module:
    """VGG-style net with batch norm, 4 stages of two 3x3 convolutions (about 4.7M params)."""
    return VGGNet(tuple(widths), num_classes=num_classes, **kw)


@register_model
def vggnet_s(num_classes: int = 7, widths: tuple[int, ...] = (32, 64, 128, 256), **kw) -> nn.Module:
    """A quarter-width ``vggnet`` (about 1.2M params) for high-volume inference."""
    return VGGNet(tuple(widths), num_classes=num_classes, **kw)


@register_model
def vggnet_t(num_classes: int = 7, widths: tuple[int, ...] = (16, 32, 64, 128), **kw) -> nn.Module:
    """A half-width ``vggnet_s`` (about 0.3M params): the fast model's student."""
    return VGGNet(tuple(widths), num_classes=num_classes, **kw)


@register_model
def vggnet_s24(
    num_classes: int = 7, widths: tuple[int, ...] = (32, 64, 128, 256), **kw
) -> nn.Module:
    """``vggnet_s`` behind a stride-2 first convolution (1.2M params, a quarter of the compute):
    as fast as ``vggnet_t`` on ONNX Runtime; the previous ``fast`` model."""
    return VGGNet(tuple(widths), num_classes=num_classes, stem_stride=2, **kw)


@register_model
def vggnet_s24d(
    num_classes: int = 7,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    depth: int | tuple[int, ...] = (2, 2, 3, 3),
    **kw,
) -> nn.Module:
    """``vggnet_s24`` with a third convolution in its 6x6 and 3x3 stages (1.9M params, 1.4x
    the compute; 0.8x the int8 speed on ONNX Runtime): the shipped ``fast`` model."""
    return vggnet_s24(num_classes, widths, depth=depth, **kw)


@register_model
def resnet(num_classes: int = 7, widths: tuple[int, ...] = (32, 64, 128, 256), **kw) -> nn.Module:
    """A narrow ResNet-18 layout for 48x48 input (about 2.8M params)."""
    return ResNet(tuple(widths), num_classes=num_classes, **kw)
