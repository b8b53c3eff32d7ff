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


def timeline_figure(times: np.ndarray, probs: np.ndarray, title: str = "") -> Figure:
    """Emotion probabilities over time (one line per emotion), e.g. the first face of a video."""
    from .annotate import COLORS

    fig = _figure(figsize=(10, 3.5))
    ax = fig.subplots()
    for i, name in enumerate(EMOTIONS):
        ax.plot(times, probs[:, i], label=name, color=np.array(COLORS[name]) / 255, lw=1.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(ncol=7, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return fig


def _band(ax, curves: list[list[float]], label: str, k: int = 0) -> None:
    # runs stopped early end their curve there: the band covers the runs still going
    n = max(len(c) for c in curves)
    arr = np.array([[*c, *[np.nan] * (n - len(c))] for c in curves], float)
    x = np.arange(1, n + 1)
    from matplotlib import colormaps

    # tab20 and a dash every other ten: a dozen variants stay distinguishable
    color = colormaps["tab20"](k % 20)
    style = "--" if (k // 10) % 2 else "-"
    mean = np.nanmean(arr, 0)
    ax.plot(x, mean, style, label=label, color=color, marker="." if n < 5 else None)
    ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), alpha=0.15, color=color)


def _epoch_axis(ax, log_if_wide: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if log_if_wide and ax.get_lines():  # one diverging variant must not flatten the others
        y = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()])
        y = y[np.isfinite(y) & (y > 0)]
        if y.size and y.max() / y.min() > 50:
            ax.set_yscale("log")


def variant_curves_figure(histories: dict[str, list[list[dict]]]) -> Figure:
    """Train/val loss and accuracy per variant: mean over repeats with a min-max band."""
    fig = _figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    for (i, j), key in zip(
        [(0, 0), (0, 1), (1, 0), (1, 1)],
        ["train_loss", "val_loss", "train_acc", "val_acc"],
        strict=True,
    ):
        ax = axes[i, j]
        for k, (variant, runs) in enumerate(histories.items()):
            if runs:
                _band(ax, [[float(r[key]) for r in rows] for rows in runs], variant, k)
        ax.set_title(key.replace("_", " "))
        _epoch_axis(ax, log_if_wide=key.endswith("loss"))
    axes[0, 0].legend(fontsize=8)
    return fig


def val_loss_figure(histories: dict[str, list[list[dict]]], key: str) -> Figure:
    """Validation loss per epoch for variants that differ in ``key`` (batch size, lr)."""
    fig = _figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for k, (variant, runs) in enumerate(histories.items()):
        _band(ax, [[float(r["val_loss"]) for r in rows] for rows in runs], variant, k)
    ax.set_title(f"validation loss by {key}")
    _epoch_axis(ax, log_if_wide=True)
    ax.legend(fontsize=8)
    return fig


def f1_bars_figure(f1: dict[str, list[list[float]]]) -> Figure:
    """Per-class F1 per variant: mean bars, std error bars."""
    fig = _figure(figsize=(11, 4))
    ax = fig.subplots()
    width = 0.8 / max(len(f1), 1)
    x = np.arange(len(EMOTIONS))
    for k, (variant, runs) in enumerate(f1.items()):
        arr = np.array(runs)
        err = arr.std(0, ddof=1) if len(arr) > 1 else None
        ax.bar(x + k * width, arr.mean(0), width, yerr=err, label=variant, capsize=2)
    ax.set_xticks(x + width * (len(f1) - 1) / 2, EMOTIONS)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    if f1:  # a suite whose every trial failed has no bars to name
        ax.legend(fontsize=8, ncol=3)
    return fig


def mean_confusion_figure(confusions: list[np.ndarray], title: str = "") -> Figure:
    """Row-normalised confusion matrix averaged over runs."""
    mats = [c / np.maximum(c.sum(1, keepdims=True), 1) for c in confusions]
    mean = np.mean(mats, axis=0)
    fig = _figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.imshow(mean, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    for i in range(len(EMOTIONS)):
        for j in range(len(EMOTIONS)):
            ax.text(
                j,
                i,
                f"{mean[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if mean[i, j] > 0.5 else "black",
            )
    ax.set_title(f"{title} (mean of {len(confusions)} runs, row-normalised)")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig
