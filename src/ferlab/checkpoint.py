"""Checkpoints are plain dicts saved atomically and loaded with ``weights_only=True``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import atomic_write_bytes
from .models import create_model, list_models
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
    return ckpt  # classes, model_name, model_kwargs: checked by build_model, which uses them


def _check_description(info: dict[str, Any], where: str) -> None:
    """Refuse (naming ``where``, its file) a checkpoint or export JSON whose classes,
    model_name or model_kwargs cannot describe a network: one line, not a KeyError or a
    TypeError from deep inside create_model."""
    classes = info.get("classes")
    if (
        not isinstance(classes, list | tuple)
        or not classes
        or not all(isinstance(c, str) for c in classes)
    ):
        raise ValueError(f"{where}: classes: expected a list of class names, got {classes!r:.80}")
    name = info.get("model_name")
    if not isinstance(name, str) or name not in list_models():
        raise ValueError(
            f"{where}: model_name: expected one of {', '.join(list_models())}, got {name!r:.80}"
        )
    kwargs = info.get("model_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: model_kwargs: expected a mapping, got {kwargs!r:.80}")


def build_model(ckpt: dict[str, Any], where: str, state: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the network a checkpoint describes (no pretrained download, nothing frozen),
    holding ``state`` (default: the checkpoint's own ``model``); an export's JSON works too.

    Anything that does not fit is one ValueError line naming ``where``, the file.
    """
    _check_description(ckpt, where)
    name, kwargs = ckpt["model_name"], ckpt.get("model_kwargs", {})
    try:
        model = create_model(name, num_classes=len(ckpt["classes"]), **kwargs)
    except Exception as e:  # kwargs from a file: a builder may fail on them in any way
        raise ValueError(f"{where}: model_kwargs {kwargs} do not build {name} ({e})") from None
    state = ckpt["model"] if state is None else state
    try:  # fp16 exports come back as float32
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
    except (RuntimeError, TypeError, AttributeError) as e:  # not a dict of fitting tensors
        raise ValueError(
            f"{where}: weights do not fit {name} with model_kwargs {kwargs} ({first_problem(e)})"
        ) from None
    return model.eval()


def first_problem(e: Exception) -> str:
    """The first of the problems torch lists one a line (every mismatched tensor of a model)."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    if not lines:
        return str(e).strip()[:200]
    more = f"; and {len(lines) - 1} more" if len(lines) > 1 else ""
    return lines[0][:200] + more
