"""An exponential moving average of a model's weights, the copy that is validated and saved."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimiser step.

    The decay warms up as ``(1 + n) / (10 + n)`` so the average is not dominated by the random
    initial weights in short runs. Batch-norm statistics are averaged like weights; integer
    buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        # state_dict tensors share storage with the modules: the lists stay valid
        pairs = zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        self._avg: list[torch.Tensor] = []  # floating-point: averaged
        self._live: list[torch.Tensor] = []
        self._copies: list[tuple[torch.Tensor, torch.Tensor]] = []  # integer buffers: copied
        for e, m in pairs:
            if e.is_floating_point():
                self._avg.append(e)
                self._live.append(m)
            else:
                self._copies.append((e, m))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model given at construction (after its step)."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        if self._avg:
            torch._foreach_lerp_(self._avg, self._live, 1 - decay)
        for e, m in self._copies:
            e.copy_(m)
