"""Reading what the recogniser is pointed at: image files and arrays as RGB, folders
of images and videos, and how many frames a source holds."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data import IMAGE_SUFFIXES, open_image, upright_8bit

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
FILE_KINDS = (*IMAGE_SUFFIXES, ".webp", ".tif", ".tiff", ".gif", *VIDEO_SUFFIXES)
MAX_PIXELS = 40_000_000  # refuse larger images: decompression bombs, not photos


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8, honouring EXIF orientation; refuse huge images."""
    path = Path(path)
    try:
        with open_image(path) as im:
            if im.width * im.height > max_pixels:
                raise ValueError(
                    f"{path}: image is {im.width}x{im.height} pixels, over the limit of "
                    f"{max_pixels} (decompression bomb?)"
                )
            return pil_to_rgb(im)
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """RGB uint8 of a PIL image, upright, 16-bit and float images scaled to 8 bits."""
    return np.asarray(upright_8bit(im).convert("RGB"))


def as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise ValueError(f"images must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")


def demo_image() -> np.ndarray:
    """A real photo with one face: scikit-image's astronaut (Eileen Collins, NASA)."""
    from skimage import data

    return data.astronaut()


def iter_files(folder: Path) -> list[Path]:
    """Images and videos under ``folder``, recursively, in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FILE_KINDS)


def count_frames(source: Any, every: int = 1, seen: set[Path] | None = None) -> int | None:
    """How many images or frames ``source`` yields (for progress bars); None if unknown.
    A file given twice counts once, as the recogniser reads it once."""
    seen = set() if seen is None else seen
    if isinstance(source, np.ndarray):
        return 1
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            files = iter_files(path)
            return sum(count_frames(f, every, seen) or 1 for f in files) or 1  # or the error
        if path.resolve() in seen:
            return 0
        seen.add(path.resolve())
        if path.suffix.lower() in VIDEO_SUFFIXES:
            import cv2

            cap = cv2.VideoCapture(str(path))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
            return (n + every - 1) // every if n > 0 else None
        return 1
    if isinstance(source, Iterable):
        counts = [count_frames(s, every, seen) for s in source]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    return None
