"""Loss functions selectable by name in the config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``, mean over the batch."""

    alpha: torch.Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: list[float] | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", torch.tensor(alpha) if alpha else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        # clamped: at p_t = 1, d(0 ** gamma) is infinite for gamma < 1, and inf * 0 is NaN
        weight = (1 - logp.exp()).clamp_min(torch.finfo(torch.float32).tiny) ** self.gamma
        loss = -weight * logp
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


def create_loss(
    name: str, gamma: float = 2.0, alpha: list[float] | None = None, label_smoothing: float = 0.0
) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma, alpha)
    raise ValueError(f"unknown loss {name!r}; expected 'ce' or 'focal'")
