"""The report's model: VGG19's 16 convolutions, global max pooling, one dense layer.

Layer indices in ``features`` match torchvision's ``vgg19`` so its ImageNet state dict
(``features.N.weight``/``bias``) loads without renaming.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..pickles import load_tensors
from . import register_model

log = logging.getLogger(__name__)

IMAGENET_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
cfgs: dict[str, list[int | str]] = {
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    def __init__(
        self, cfg: list[int | str], num_classes: int = 7, hidden: int = 512, dropout: float = 0.5
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        # on 48x48 faces the fifth pool turns block 5's 3x3 map into 1x1 (its top-left 2x2),
        # so this global max pooling sees one position: exactly what the report's Keras
        # VGG19(include_top=False) + GlobalMaxPooling2D did. Kept for fidelity to the report
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[list[nn.Module]]:
        """The convolutional blocks, each ending at a max-pool."""
        out: list[list[nn.Module]] = [[]]
        for m in self.features:
            out[-1].append(m)
            if isinstance(m, nn.MaxPool2d):
                out.append([])
        return [b for b in out if b]

    def freeze(self, n_blocks: int) -> None:
        blocks = self.blocks()
        if not 0 <= n_blocks <= len(blocks):
            raise ValueError(f"frozen_blocks must be in 0..{len(blocks)}, got {n_blocks}")
        for block in blocks[:n_blocks]:
            for m in block:
                for p in m.parameters():
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grayscale replicated to RGB, as the report did
            x = x.expand(-1, 3, -1, -1)
        return self.head(self.pool(self.features(x)))


def _read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    if str(source) == "imagenet":
        # Needs internet on first use; cached under torch.hub's directory afterwards.
        try:
            # check_hash: the file's SHA-256 must start with the name's "dcbb9e9d"
            return torch.hub.load_state_dict_from_url(
                IMAGENET_URL, progress=True, check_hash=True, weights_only=True
            )
        except OSError as e:  # URLError is an OSError: no network, DNS, HTTP errors
            raise OSError(
                f"ImageNet weights could not be downloaded from {IMAGENET_URL} ({e}); "
                "download vgg19-dcbb9e9d.pth elsewhere and set pretrained to its path"
            ) from None
        except RuntimeError as e:  # torch's hash check; the bad download is not kept
            raise ValueError(
                f"{IMAGENET_URL}: the download is not the expected file ({e})"
            ) from None
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_tensors(path, "a PyTorch state dict")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_imagenet_features(model: VGG, source: str | Path) -> None:
    """Load torchvision-format VGG19 ``features.*`` weights; every shape is checked."""
    state = _read_state_dict(source)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{source}: not torchvision VGG19 weights; missing {missing[:4]}...")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{source}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
            )
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    log.info("loaded %d pretrained tensors from %s", len(own), source)


def _create_vgg(variant: str, pretrained: str | None = None, frozen_blocks: int = 0, **kw) -> VGG:
    model = VGG(cfgs[variant], **kw)
    if pretrained:
        load_imagenet_features(model, pretrained)
    model.freeze(frozen_blocks)
    return model


@register_model
def vgg19(
    num_classes: int = 7,
    pretrained: str | None = None,
    frozen_blocks: int = 0,
    hidden: int = 512,
    dropout: float = 0.5,
) -> nn.Module:
    """The report's VGG19: ``pretrained`` is a weights path, ``"imagenet"`` or None (He init)."""
    return _create_vgg(
        "vgg19", pretrained, frozen_blocks, num_classes=num_classes, hidden=hidden, dropout=dropout
    )
