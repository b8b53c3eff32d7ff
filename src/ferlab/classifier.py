"""Classifier: a trained network plus its own preprocessing; ``load_model(path)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import build_model, load_checkpoint
from .data import EMOTIONS
from .evaluate import predict_logits


class Classifier:
    """Classifies 48x48 grayscale faces with the preprocessing the model was trained with."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: dict,
        classes: tuple[str, ...] = EMOTIONS,
        name: str = "",
        meta: dict | None = None,
        device: str = "cpu",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.classes = tuple(classes)
        self.name = name
        self.meta = meta or {}

    def predict_proba(
        self, faces: np.ndarray, batch_size: int = 256, tta: str = "none"
    ) -> np.ndarray:
        """float32 ``(N, 7)`` probabilities in EMOTIONS order for uint8 faces ``(N, 48, 48)``."""
        faces = np.asarray(faces)
        if faces.ndim == 2:
            faces = faces[None]
        if faces.ndim != 3 or faces.shape[1:] != (48, 48) or faces.dtype != np.uint8:
            raise ValueError(
                f"faces must be uint8 (N, 48, 48), got {faces.dtype} {tuple(faces.shape)}"
            )
        out = np.empty((len(faces), len(self.classes)), dtype=np.float32)
        # convert chunk by chunk so N = 100,000 never builds one huge float tensor
        chunk = 8192
        for i in range(0, len(faces), chunk):
            x = torch.from_numpy(np.ascontiguousarray(faces[i : i + chunk]))
            logits = predict_logits(self.model, x, self.preprocess, self.device, batch_size, tta)
            out[i : i + chunk] = torch.softmax(logits, 1).numpy()
        return out

    def predict(self, faces: np.ndarray, **kw) -> np.ndarray:
        """Predicted class indices ``(N,)``."""
        return self.predict_proba(faces, **kw).argmax(1)


def load_model(path: str | Path, device: str = "cpu") -> Classifier:
    """Load a checkpoint (``.pt`` file or run directory) as a :class:`Classifier`."""
    ckpt = load_checkpoint(path)
    return Classifier(
        build_model(ckpt),
        ckpt["preprocess"],
        tuple(ckpt["classes"]),
        name=ckpt["model_name"],
        meta={"config": ckpt.get("config", {})},
        device=device,
    )
