"""Optimisers and learning-rate schedules selectable by name in the config."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def create_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected adam, adamw or sgd")


def create_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """Plateau steps once per epoch on val loss; cosine and onecycle once per batch."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, "min", cfg.plateau_factor, cfg.plateau_patience, min_lr=cfg.min_lr
        )
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, cfg.epochs * steps_per_epoch, eta_min=cfg.min_lr
        )
    if cfg.scheduler == "onecycle":
        total = cfg.epochs * steps_per_epoch
        warmup = cfg.warmup_epochs if cfg.warmup_epochs < 1 else cfg.warmup_epochs / cfg.epochs
        # torch divides by zero on a warm-up of exactly one batch (a small folder's short run):
        # one batch or less of warm-up is none
        if warmup * total <= 1:
            warmup = 0.0
        return torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total, pct_start=warmup)
    if cfg.scheduler == "none":
        return None
    raise ValueError(
        f"unknown scheduler {cfg.scheduler!r}; expected plateau, cosine, onecycle, none"
    )
