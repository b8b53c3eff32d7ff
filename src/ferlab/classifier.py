"""Classifier: a trained network plus its own preprocessing; ``load_model(path)``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import build_model, load_checkpoint
from .config import as_whole
from .data import EMOTIONS
from .evaluate import predict_logits
from .transforms import check_preprocess, check_tta


def check_faces(faces: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 48, 48)`` faces (one ``(48, 48)`` face is promoted), else ValueError."""
    faces = np.asarray(faces)
    if faces.ndim == 2:
        faces = faces[None]
    if faces.ndim != 3 or faces.shape[1:] != (48, 48) or faces.dtype != np.uint8:
        raise ValueError(f"faces must be uint8 (N, 48, 48), got {faces.dtype} {tuple(faces.shape)}")
    return faces


def check_batch(batch_size: int) -> int:
    """``batch_size`` as an int >= 1 (numpy integers too), else ValueError."""
    n = as_whole(batch_size)
    if n is None or n < 1:
        raise ValueError(f"batch_size must be a whole number at least 1, got {batch_size!r}")
    return n


def own_tta(value: object, where: str) -> str:
    """An export's recorded ``tta``, else ValueError naming the file."""
    try:
        return check_tta(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(f"{where}: tta: {e}") from None


class Classifier:
    """Classifies 48x48 grayscale faces with the preprocessing the model was trained with."""

    runtime = "torch"  # what runs it (OnnxClassifier: "onnx"), as reported by `ferlab serve`

    def __init__(
        self,
        model: nn.Module,
        preprocess: dict,
        classes: tuple[str, ...] = EMOTIONS,
        name: str = "",
        meta: dict | None = None,
        device: str = "cpu",
        tta: str = "none",
    ):
        self.device = torch.device(device)
        # channels_last: 1.4-1.6x faster on CPU (benchmarks/infer_speed.py, its NCHW row)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.preprocess = check_preprocess(preprocess)
        self.classes = tuple(classes)
        self.name = name
        self.meta = meta or {}
        # the views predict_proba averages when not told: an export's own, chosen on held-out
        # data (the shipped default: shift, docs/MODEL_CARD.md)
        self.tta = check_tta(tta)

    def predict_proba(
        self, faces: np.ndarray, batch_size: int = 256, tta: str | None = None
    ) -> np.ndarray:
        """float32 ``(N, 7)`` probabilities in EMOTIONS order for uint8 faces ``(N, 48, 48)``.

        ``tta``: "none", "flip" or "shift"; None is the model's own (:attr:`tta`).
        """
        faces, batch_size = check_faces(faces), check_batch(batch_size)
        tta = check_tta(tta, self.tta)
        out = np.empty((len(faces), len(self.classes)), dtype=np.float32)
        # convert chunk by chunk so N = 100,000 never builds one huge float tensor
        chunk = 8192
        for i in range(0, len(faces), chunk):
            x = torch.from_numpy(np.ascontiguousarray(faces[i : i + chunk]))
            logits = predict_logits(
                self.model, x, self.preprocess, self.device, batch_size, tta, channels_last=True
            )
            out[i : i + chunk] = torch.softmax(logits, 1).numpy()
        return out

    def predict(self, faces: np.ndarray, **kw) -> np.ndarray:
        """Predicted class indices ``(N,)``."""
        return self.predict_proba(faces, **kw).argmax(1)


def _on_onnx(model: Classifier):
    import tempfile

    from .export import export_onnx
    from .onnx_model import load_onnx

    # the session holds the graph in memory: the file can go once it is loaded
    with tempfile.TemporaryDirectory(prefix="ferlab-") as tmp:
        return load_onnx(export_onnx(model, Path(tmp) / "model.onnx"))


WEIGHTS = Path(__file__).parent / "weights"
REQUIRED = ("model_name", "classes", "preprocess")  # metadata every export must carry
# Classifier.meta entries worth shipping
TRAINING_KEYS = ("model_kwargs", "metrics", "config", "soup")


def shipped_models() -> list[str]:
    """Names of the models inside the package (``load_model(name)``)."""
    return sorted({p.stem for p in WEIGHTS.glob("*") if p.suffix in (".json", ".onnx")})


def missing_model(name: str | Path) -> FileNotFoundError:
    names = ", ".join(shipped_models()) or "none installed"
    return FileNotFoundError(
        f"model {name}: no such checkpoint, run directory, export or shipped name ({names})"
    )


def check_runtime(runtime: str) -> None:
    if runtime not in ("torch", "onnx"):
        raise ValueError(f"unknown runtime {runtime!r}; expected torch or onnx")


def model_file(path: str | Path | None = None) -> Path:
    """The file or run directory that :func:`load_model` reads, a shipped name resolved."""
    if path is None:
        path = "default"
    # a name (a Path too, when no such file is here); a string name wins over a local file
    if str(path) in shipped_models() and (isinstance(path, str) or not Path(path).exists()):
        # a shipped model is a .json (safetensors export or ensemble) or an .onnx file
        json_path = WEIGHTS / f"{path}.json"
        return json_path if json_path.is_file() else WEIGHTS / f"{path}.onnx"
    path = Path(path)
    if path.is_dir():  # a run directory: its selected checkpoint
        return path / "best.pt"
    if path.suffix == ".safetensors":  # an export is described, and read, by its .json
        return path.with_suffix(".json")
    return path


def weights_sha256(path: str | Path) -> str:
    """The sha256 of the file holding ``path``'s weights (a run directory's ``best.pt``, an
    export's ``.safetensors``, which its ``.json`` records as ``sha256``): provenance that
    still names the weights after the path is overwritten."""
    f = model_file(path)
    if f.suffix == ".json":
        f = f.with_suffix(".safetensors")
    return hashlib.sha256(f.read_bytes()).hexdigest()


def load_model(path: str | Path | None = None, device: str = "cpu", runtime: str = "torch"):
    """Load a model as an object with ``predict_proba(faces) -> (N, 7)``.

    ``path``: None or "default" for the model shipped with ferlab, another shipped name
    (:func:`shipped_models`), a training checkpoint (``.pt`` or run directory), an exported
    ``.onnx`` file, a ``.json``/``.safetensors`` pair written by ``ferlab export``, or an
    ensemble manifest (``.json``) written by ``ferlab ensemble``.
    ``runtime="onnx"`` exports a PyTorch model on the fly and runs it on ONNX Runtime (an
    ``.onnx`` file always runs there).
    """
    check_runtime(runtime)
    path = model_file(path)
    if (runtime == "onnx" or str(path).endswith(".onnx")) and torch.device(device).type != "cpu":
        raise ValueError(f"device {device}: ONNX models run on the CPU here; use runtime torch")
    if runtime == "onnx" and not str(path).endswith(".onnx"):
        model = load_model(path, device)
        if hasattr(model, "members"):  # an ensemble: each member on ONNX Runtime
            model.members = [_on_onnx(m) for m in model.members]
            return model
        return _on_onnx(model)
    if path.suffix == ".onnx":
        from .onnx_model import load_onnx

        return load_onnx(path)
    if path.suffix in (".json", ".safetensors"):
        from .ensemble import is_manifest, load_ensemble
        from .export import load_safetensors_model

        if is_manifest(path):
            return load_ensemble(path, device)

        return load_safetensors_model(path, device)
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        raise missing_model(path)  # a bare name: misspelt, or not shipped with this install
    ckpt = load_checkpoint(path)
    return Classifier(
        build_model(ckpt, str(path)),
        ckpt["preprocess"],
        tuple(ckpt["classes"]),
        name=ckpt["model_name"],
        meta={
            "model_kwargs": ckpt.get("model_kwargs", {}),
            "config": ckpt.get("config", {}),
            "paths": ckpt.get("paths", {}),  # absolute input paths: not exported (machine-local)
            "metrics": ckpt.get("metrics", {}),
        },
        device=device,
    )
