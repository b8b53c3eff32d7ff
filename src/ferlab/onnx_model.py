"""Run an ONNX file written by :func:`ferlab.export.export_onnx` on ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classifier import REQUIRED, TRAINING_KEYS, check_batch, check_faces, own_tta
from .transforms import check_preprocess, check_tta, mean_log_probs, tta_views


class OnnxClassifier:
    """An exported ``.onnx`` file (path or bytes) run by ONNX Runtime, as a Classifier."""

    runtime = "onnx"

    def __init__(self, source: str | Path | bytes, threads: int = 0):
        import onnxruntime as ort

        self.path = None if isinstance(source, bytes) else Path(source)
        where = str(self.path or "<bytes>")
        if self.path is not None and not self.path.is_file():
            raise FileNotFoundError(f"{where}: ONNX model not found")
        opts = ort.SessionOptions()
        # 0: as many as torch uses, so torch.set_num_threads (a serve worker's share of the
        # cores) governs both runtimes; ONNX Runtime's own 0 would take every core
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(
                source if self.path is None else str(self.path),
                opts,
                providers=["CPUExecutionProvider"],
            )
        except Exception as e:  # ONNX Runtime raises its own pybind types; one clear line
            raise ValueError(f"{where}: not a valid ONNX model ({type(e).__name__}: {e})") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED if k not in props]
        if missing:
            raise ValueError(f"{where}: not a ferlab export (metadata lacks {', '.join(missing)})")
        self.classes = _check_classes(
            _parse(props.pop("classes"), where, "classes"), self.session, where
        )
        self.preprocess = check_preprocess(
            _parse(props.pop("preprocess"), where, "preprocess"), f"{where}: metadata"
        )
        self.preprocess.pop("input", None)
        self.tta = own_tta(props.pop("tta", "none"), f"{where}: metadata")
        self.name = props.pop("model_name")
        self.meta = {k: _parse(v, where, k) if k in TRAINING_KEYS else v for k, v in props.items()}

    def _run(self, x: np.ndarray, output: str) -> np.ndarray:
        return self.session.run([output], {"faces": x})[0]

    def predict_proba(
        self, faces: np.ndarray, batch_size: int = 256, tta: str | None = None
    ) -> np.ndarray:
        """float32 ``(N, 7)`` probabilities in ``classes`` order for uint8 faces ``(N, 48, 48)``.

        ``tta`` averages the log-probabilities over the views of
        :func:`~ferlab.transforms.tta_views`, then takes the softmax: the same numbers as
        ``Classifier.predict_proba(..., tta=tta)``.
        """
        faces, batch_size = check_faces(faces), check_batch(batch_size)
        tta = check_tta(tta, self.tta)
        out = np.empty((len(faces), len(self.classes)), dtype=np.float32)
        for i in range(0, len(faces), batch_size):
            x = faces[i : i + batch_size, None].astype(np.float32)
            if tta == "none":
                out[i : i + batch_size] = self._run(x, "probs")
                continue
            views = tta_views(torch.from_numpy(x), tta)
            logits = [torch.from_numpy(self._run(v.contiguous().numpy(), "logits")) for v in views]
            out[i : i + batch_size] = mean_log_probs(logits).softmax(1).numpy()
        return out

    def predict(self, faces: np.ndarray, **kw) -> np.ndarray:
        """Predicted class indices ``(N,)``."""
        return self.predict_proba(faces, **kw).argmax(1)


def _parse(text: str, where: str, key: str) -> Any:
    """One metadata entry, JSON-decoded; a bad one named with its file and key."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where}: metadata {key}: expected JSON ({e})") from None


def _check_classes(classes: Any, session: Any, where: str) -> tuple[str, ...]:
    """The metadata's class names, as many as the graph's outputs when that is fixed: a
    mismatch would otherwise load and fail with a broadcast error at the first prediction."""
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(
            f"{where}: metadata classes: expected a non-empty list of names, got {classes!r:.80}"
        )
    shape = next((o.shape for o in session.get_outputs() if o.name == "probs"), None)
    width = shape[-1] if shape else None  # a str (a named axis) when not fixed
    if isinstance(width, int) and width != len(classes):
        raise ValueError(
            f"{where}: metadata classes: expected {width} names (the graph's outputs), "
            f"got {len(classes)}"
        )
    return tuple(classes)


def load_onnx(path: str | Path, threads: int = 0) -> OnnxClassifier:
    """Load an ``.onnx`` file written by :func:`export_onnx`."""
    return OnnxClassifier(Path(path), threads)
