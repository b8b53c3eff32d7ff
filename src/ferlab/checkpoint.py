"""Checkpoints are plain dicts saved atomically and loaded with ``weights_only=True``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import atomic_write_bytes
from .models import create_model
from .pickles import load_tensors
from .transforms import check_preprocess


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    atomic_write_bytes(Path(dst), Path(src).read_bytes())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run directory: its selected checkpoint
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = load_tensors(path, "a ferlab checkpoint")
    if not isinstance(ckpt, dict) or not {"model_name", "model", "preprocess"} <= set(ckpt):
        raise ValueError(f"{path}: not a ferlab checkpoint (needs model_name, model, preprocess)")
    check_preprocess(ckpt["preprocess"], str(path))
    return ckpt


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the network from a checkpoint (no pretrained download, nothing frozen)."""
    model = create_model(
        ckpt["model_name"], num_classes=len(ckpt["classes"]), **ckpt.get("model_kwargs", {})
    )
    model.load_state_dict(ckpt["model"])
    return model.eval()
