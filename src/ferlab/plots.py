"""Pure plotting functions: data in, matplotlib Figure out; save_figure writes atomically."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import EMOTIONS, atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .evaluate import Metrics


def _figure(*args, **kw) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(*args, **kw)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def curves_figure(rows: Sequence[dict]) -> Figure:
    """Loss and accuracy per epoch from metrics.csv rows."""
    fig = _figure(figsize=(10, 4))
    epochs = [int(r["epoch"]) for r in rows]
    for ax, key, title in zip(
        fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy"), strict=True
    ):
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in rows], label="train")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_figure(metrics: Metrics) -> Figure:
    """Counts and row-normalised confusion matrices side by side."""
    fig = _figure(figsize=(13, 5.5))
    counts = np.asarray(metrics.confusion)
    for ax, mat, title, fmt in zip(
        fig.subplots(1, 2),
        (counts, metrics.normalized_confusion()),
        ("counts", "row-normalised (recall on the diagonal)"),
        ("{:d}", "{:.2f}"),
        strict=True,
    ):
        ax.imshow(mat, cmap="Blues")
        ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
        ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        hi = mat.max() or 1
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                v = mat[i, j]
                ax.text(
                    j,
                    i,
                    fmt.format(int(v) if fmt == "{:d}" else v),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > hi / 2 else "black",
                )
    return fig


def class_distribution_figure(counts: dict[str, np.ndarray]) -> Figure:
    """Grouped bars: images per class for each split."""
    fig = _figure(figsize=(9, 4))
    ax = fig.subplots()
    width = 0.8 / max(len(counts), 1)
    x = np.arange(len(EMOTIONS))
    for k, (name, c) in enumerate(counts.items()):
        ax.bar(x + k * width, c, width, label=name)
    ax.set_xticks(x + width * (len(counts) - 1) / 2, EMOTIONS)
    ax.set_ylabel("images")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


def samples_figure(images: np.ndarray, labels: np.ndarray, per_class: int = 8) -> Figure:
    """A grid with ``per_class`` sample faces (first ones found) for each class."""
    fig = _figure(figsize=(per_class * 0.9, len(EMOTIONS) * 1.0))
    axes = fig.subplots(len(EMOTIONS), per_class, squeeze=False)
    for c, name in enumerate(EMOTIONS):
        idx = np.flatnonzero(labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images[idx[j]], cmap="gray", vmin=0, vmax=255)
        axes[c, 0].set_title(name, fontsize=8, loc="left")
    return fig
