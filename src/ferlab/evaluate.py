"""Metrics: accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import EMOTIONS, atomic_write_bytes
from .outputs import check_formats
from .transforms import check_tta, fit_input, mean_log_probs, to_input, tta_views

log = logging.getLogger(__name__)


def input_views(
    images: torch.Tensor,
    spec: dict,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    tta: str = "none",
    channels_last: bool = False,
) -> Iterator[list[torch.Tensor]]:
    """Uint8 faces ``(N, 48, 48)`` in batches as the network's inputs: scaled as ``spec``
    says, laid out, and as the views of :func:`~ferlab.transforms.tta_views` (one for none)."""
    for i in range(0, len(images), batch_size):
        x = to_input(images[i : i + batch_size].to(device), spec)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield [fit_input(v, spec) for v in tta_views(x, tta)]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    spec: dict,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    tta: str = "none",
    channels_last: bool = False,
) -> torch.Tensor:
    """Float32 logits ``(N, 7)`` for uint8 faces ``(N, 48, 48)``, in batches, on CPU.

    With ``tta`` other than ``"none"`` the result is the mean log-probability over the
    views of :func:`~ferlab.transforms.tta_views` (``flip``: each face and its mirror).
    """
    check_tta(tta)
    was_training = model.training
    model.eval()
    out = []
    for views in input_views(images, spec, device, batch_size, tta, channels_last):
        if len(views) == 1:
            out.append(model(views[0]).float().cpu())
            continue
        out.append(mean_log_probs([model(v) for v in views]).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, len(EMOTIONS))


@dataclass
class Metrics:
    accuracy: float
    macro_f1: float
    precision: list[float]  # per class, EMOTIONS order
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]  # rows = true class, columns = predicted class
    loss: float | None = None

    @classmethod
    def from_predictions(
        cls, y_true: np.ndarray, y_pred: np.ndarray, loss: float | None = None
    ) -> Metrics:
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        labels = list(range(len(EMOTIONS)))
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        # macro-F1 over the classes that occur as labels or predictions, as sklearn's default:
        # a class that is only ever predicted wrongly counts with F1 0
        present = np.isin(labels, np.union1d(y_true, y_pred))
        return cls(
            accuracy=float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
            macro_f1=float(np.mean(f[present])) if present.any() else 0.0,
            precision=[float(v) for v in p],
            recall=[float(v) for v in r],
            f1=[float(v) for v in f],
            support=[int(v) for v in s],
            confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            loss=loss,
        )

    def normalized_confusion(self) -> np.ndarray:
        cm = np.asarray(self.confusion, dtype=np.float64)
        return cm / np.maximum(cm.sum(1, keepdims=True), 1)

    def to_dict(self) -> dict:
        per_class = {
            name: {
                "precision": self.precision[i],
                "recall": self.recall[i],
                "f1": self.f1[i],
                "support": self.support[i],
            }
            for i, name in enumerate(EMOTIONS)
        }
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "per_class": per_class,
            "confusion": self.confusion,
            "classes": list(EMOTIONS),
        }

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for i, name in enumerate(EMOTIONS):
            w.writerow(
                [
                    name,
                    *(f"{v:.4f}" for v in (self.precision[i], self.recall[i], self.f1[i])),
                    self.support[i],
                ]
            )
        w.writerow(["macro", "", "", f"{self.macro_f1:.4f}", sum(self.support)])
        w.writerow(["accuracy", "", "", f"{self.accuracy:.4f}", sum(self.support)])
        return buf.getvalue()

    def to_markdown(self, title: str = "Evaluation") -> str:
        lines = [
            f"# {title}",
            "",
            f"- accuracy: **{self.accuracy:.2%}**",
            f"- macro-F1: {self.macro_f1:.4f}",
            f"- faces: {sum(self.support)}",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for i, name in enumerate(EMOTIONS):
            lines.append(
                f"| {name} | {self.precision[i]:.4f} | {self.recall[i]:.4f} | "
                f"{self.f1[i]:.4f} | {self.support[i]} |"
            )
        lines += [
            "",
            "Confusion matrix (rows: true, columns: predicted):",
            "",
            "| true \\ pred | " + " | ".join(EMOTIONS) + " |",
            "|---" * (len(EMOTIONS) + 1) + "|",
        ]
        for i, name in enumerate(EMOTIONS):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in self.confusion[i]) + " |")
        return "\n".join(lines) + "\n"

    def render(self, fmt: str, title: str = "Evaluation") -> str:
        """The metrics as ``json``, ``csv`` or ``md`` text."""
        check_formats([fmt])
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        return self.to_csv() if fmt == "csv" else self.to_markdown(title)

    def save(
        self,
        out_dir: str | Path,
        formats: Sequence[str] = ("json", "csv", "md"),
        title: str = "Evaluation",
    ) -> list[Path]:
        """Write metrics.{json,csv,md} and confusion.png atomically under ``out_dir``."""
        from .plots import confusion_figure, save_figure

        out = Path(out_dir)
        check_formats(formats)  # before the first file: all of them or none
        written = []
        for fmt in formats:
            atomic_write_bytes(out / f"metrics.{fmt}", self.render(fmt, title).encode())
            written.append(out / f"metrics.{fmt}")
        written.append(save_figure(confusion_figure(self), out / "confusion.png"))
        return written


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor) -> Metrics:
    loss = float(F.cross_entropy(logits, labels)) if len(labels) else None
    return Metrics.from_predictions(labels.numpy(), logits.argmax(1).numpy(), loss)


SPLIT_ALIASES = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def evaluate_split(
    classifier,
    data_path: str,
    split: str = "PublicTest",
    split_mode: str | None = None,
    tta: str | None = None,
    ignore_unknown: bool | None = None,
) -> Metrics:
    """Evaluate a model with ``predict_proba`` (checkpoint or ONNX) on one split of a dataset,
    split as :func:`split_for` says. ``tta=None`` keeps the model's own: none, or an
    ensemble's calibrated one."""
    from .transforms import check_tta

    check_tta(tta)  # before the data loads
    mode, seed, ignore = split_for(classifier, data_path, split_mode, ignore_unknown)
    if split == "all" and trained_on(classifier, data_path):
        log.warning(
            "split all of %s includes the faces %s was trained on; its score is not a test",
            data_path,
            getattr(classifier, "name", "the model"),
        )
    part = load_split(data_path, split, mode, seed, ignore)
    return evaluate_probs(classifier.predict_proba(part.images, tta=tta), part.labels)


def split_for(
    classifier, data_path: str, split_mode: str | None = None, ignore_unknown: bool | None = None
) -> tuple[str, int, bool]:
    """How to split ``data_path`` for a model: ``(split_mode, seed, ignore_unknown)``.

    ``split_mode=None``: on the data the model was trained on, the split it was trained with
    (a stratified split's seed included, so its held-out faces stay held out); otherwise
    ``official``. ``ignore_unknown=None``: as trained on the same data, else off (unknown class
    folders fail).
    """
    if split_mode not in (None, "official", "stratified"):  # not "unknown split": --split is fine
        raise ValueError(f"split_mode: expected official or stratified, got {split_mode!r}")
    trained = (getattr(classifier, "meta", None) or {}).get("config") or {}
    same_data = trained_on(classifier, data_path)
    if split_mode is None:
        split_mode = trained.get("split", "official") if same_data else "official"
        if trained.get("split") == "stratified" and not same_data:
            # a copy, or an export (which carries the path as given only) evaluated from
            # another folder, is not recognised: the official split may hold training faces
            log.warning(
                "%s was trained on a stratified split of %s, which %s is not recognised as; "
                "scoring its official split (if it is the same data, pass split_mode="
                "'stratified', --split-mode stratified in the CLI, to keep training faces out)",
                getattr(classifier, "name", "the model"),
                trained.get("data"),
                data_path,
            )
    if ignore_unknown is None:
        ignore_unknown = bool(trained.get("ignore_unknown")) and same_data
    # the seed draws a stratified split only: official splits of any seed are one split
    seed = int(trained.get("seed", 0)) if same_data and split_mode == "stratified" else 0
    return split_mode, seed, ignore_unknown


def trained_on(classifier, data_path: str) -> bool:
    """Whether ``data_path`` is the data the model was trained on: the path as given (resolved
    from here) or, for a checkpoint, as resolved when training started, so a relative --data
    is recognised from another folder too."""
    meta = getattr(classifier, "meta", None) or {}
    trained = meta.get("config") or {}
    known = [p for p in (trained.get("data"), (meta.get("paths") or {}).get("data")) if p]
    return Path(data_path).resolve() in {Path(p).resolve() for p in known}


def load_split(
    data_path: str,
    split: str,
    split_mode: str = "official",
    seed: int = 0,
    ignore_unknown: bool = False,
):
    """The faces of one split, named as FER-2013 does (PublicTest) or generically (val), or
    ``all`` of them: another data set, or a folder of faces the model never saw."""
    from .data import load_dataset, split_dataset

    key = SPLIT_ALIASES.get(split, split)
    if key not in ("train", "val", "test", "all"):
        names = [*SPLIT_ALIASES, *SPLIT_ALIASES.values(), "all"]
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(names)}")
    data = load_dataset(data_path, ignore_unknown)
    part = data if key == "all" else split_dataset(data, split_mode, seed)[key]
    if len(part) == 0:
        raise ValueError(f"{data_path}: split {split!r} ({split_mode} split) holds no faces")
    return part


def held_out(models: list, data: str, split: str, purpose: str):
    """The faces of ``split``, a held-out validation split of ``data`` for every one of
    ``models`` (``purpose``, such as "calibrate", names what it is for in the refusal), and
    the ``(split_mode, seed, ignore_unknown)`` it was drawn with. Models trained on different
    splits are refused: one's held-out faces would be another's training faces."""
    # the training faces would flatter, the test faces no longer be a test; a misspelt name
    # is left to load_split, which lists the valid ones
    if SPLIT_ALIASES.get(split, split) in ("train", "test", "all"):
        raise ValueError(
            f"--split {split}: {purpose} on the held-out validation split "
            "(PublicTest, or val of a folder), not the training or test faces"
        )
    splits = {split_for(m, data) for m in models}
    if len(splits) > 1:
        said = "; ".join(
            mode
            + (f" (seed {seed})" if mode == "stratified" else "")
            + (", unknown class folders ignored" if ignore else "")
            for mode, seed, ignore in sorted(splits)
        )
        raise ValueError(f"{data}: the models were trained on different splits: {said}")
    how = splits.pop()
    return load_split(data, split, *how), how


def evaluate_probs(probs: np.ndarray, labels: np.ndarray) -> Metrics:
    """Metrics from probabilities of any model (PyTorch or ONNX Runtime)."""
    log_probs = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1)))
    return evaluate_logits(log_probs, torch.from_numpy(labels))
