"""Mixup and CutMix for a training batch, on the device, parameters drawn from a generator.

Mixup (Zhang et al. 2018) blends two faces; CutMix (Yun et al. 2019) pastes a rectangle of one
face onto another. Either way each face is paired with another of the batch (``perm``) and its
target becomes ``lam * own + (1 - lam) * partner``. With both on, each batch picks one of the
two at even odds, as timm does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Mix:
    mixup: float = 0.0  # Beta(alpha, alpha) for mixup's lambda; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) for CutMix's area; 0 = off
    prob: float = 1.0  # probability that a batch is mixed at all

    def __post_init__(self) -> None:
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(
                f"mixup and cutmix are Beta alphas >= 0, got {self.mixup} and {self.cutmix}"
            )
        if not 0 <= self.prob <= 1:
            raise ValueError(f"mix_prob is a probability in [0, 1], got {self.prob}")

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup > 0 or self.cutmix > 0)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mixed batch, partner index of each face, weight of each face's own target).

        The same draws from ``generator`` in every process keep distributed ranks in step.
        """
        n = x.shape[0]
        perm = torch.randperm(n, generator=generator)
        # a number drawn from the generator seeds numpy's Beta: torch's Beta takes no generator
        seed = int(torch.randint(2**62, (1,), generator=generator))
        use_cutmix = bool(torch.rand(1, generator=generator) < 0.5)
        apply = bool(torch.rand(1, generator=generator) < self.prob)
        if not apply or not self.active:
            return x, perm, 1.0
        if self.mixup <= 0 or (self.cutmix > 0 and use_cutmix):
            lam = float(np.random.default_rng(seed).beta(self.cutmix, self.cutmix))
            return _cutmix(x, perm, lam, generator)
        lam = float(np.random.default_rng(seed).beta(self.mixup, self.mixup))
        return blend(x, perm, lam), perm, lam


def _cutmix(
    x: torch.Tensor, perm: torch.Tensor, lam: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a box of 1 - lam of the area from each face's partner; lam is then recomputed
    from the box as clipped at the border."""
    _, _, h, w = x.shape
    ratio = math.sqrt(1 - lam)
    bh, bw = round(h * ratio), round(w * ratio)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm.to(x.device), :, y0:y1, x0:x1]
    return out, perm, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def blend(t: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * t + (1 - lam) * t[perm]``: mixup's faces, and soft targets mixed like them."""
    return lam * t + (1 - lam) * t[perm.to(t.device)]
