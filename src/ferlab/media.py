"""Reading what the recogniser is pointed at: image files and arrays as RGB, folders
of images and videos, and how many frames a source holds."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data import IMAGE_SUFFIXES, hidden, open_image, upright_8bit
from .outputs import is_run_output

log = logging.getLogger(__name__)
# FFmpeg prints its own lines ("moov atom not found") for a corrupt video, beside ferlab's
# one-line error; OpenCV reads this as each capture opens. A user's own setting is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
FILE_KINDS = (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
MAX_PIXELS = 40_000_000  # refuse larger images: decompression bombs, not photos


class TooManyPixels(ValueError):
    """An image over the pixel limit: a decompression bomb, not a photo."""


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8, honouring EXIF orientation; refuse huge images."""
    path = Path(path)
    try:
        with open_image(path) as im:
            return limited_rgb(im, max_pixels)
    except TooManyPixels as e:
        raise ValueError(f"{path}: {e} (decompression bomb?)") from None
    # ValueError too, as data.read_image: Pillow raises it on a bad header (PGM maxval 70000)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def limited_rgb(im: Image.Image, max_pixels: int) -> np.ndarray:
    """RGB uint8 of an opened image, upright, 16-bit and float images scaled to 8 bits; its
    size is checked against ``max_pixels`` before it is decoded."""
    if im.width * im.height > max_pixels:
        raise TooManyPixels(
            f"image is {im.width}x{im.height} pixels, over the limit of {max_pixels}"
        )
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


def iter_files(folder: Path, skip: Path | None = None, quiet: bool = False) -> list[Path]:
    """Images and videos under ``folder``, recursively, in sorted order, but no hidden ones
    (macOS's ``._x.jpg``, ``.thumbnails/``) and none under ``skip``: a run's output folder
    inside its input folder holds annotated images and videos that a second run must not
    take for inputs. When ``skip`` is ``folder`` or holds it, only what a run writes there
    is skipped (``annotated/``, ``*_annotated.mp4``, ``*_timeline.png``)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in FILE_KINDS and not hidden(p, folder) and p.is_file()
    )
    if skip is None:
        return files
    skip = skip.resolve()
    if not folder.resolve().is_relative_to(skip):
        return [p for p in files if not p.resolve().is_relative_to(skip)]
    outputs = [p for p in files if is_run_output(p.resolve().relative_to(skip))]
    if outputs and not quiet:  # a user's own x_timeline.png is among them too: say so
        shown = ", ".join(map(str, outputs[:3])) + (", ..." if len(outputs) > 3 else "")
        log.warning(
            "%s: skipped %d file(s) that a run writes into it (%s); "
            "choose another --out to classify them",
            folder,
            len(outputs),
            shown,
        )
    return [p for p in files if p not in outputs]


def iter_sources(
    source: Any, skip: Path | None = None, quiet: bool = False
) -> Iterator[np.ndarray | Path]:
    """Each array, file and empty folder of ``source`` (path, folder, array, or a list of
    these), folders expanded, a file given twice (``vids/ vids/a.mp4``) once: outputs are
    named by path, so a second pass would append to the first's annotated video.
    Folders are expanded without the files under ``skip`` (:func:`iter_files`; ``quiet``: not
    said again, as when frames are counted before they are read)."""
    seen: set[Path] = set()

    def walk(item: Any) -> Iterator[np.ndarray | Path]:
        if isinstance(item, np.ndarray):
            yield item
        elif isinstance(item, str | Path):
            path = Path(item)
            files = iter_files(path, skip, quiet) if path.is_dir() else [path]
            if not files:
                yield path  # an empty folder: reported, not silently skipped
            for f in files:
                if f.resolve() not in seen:
                    seen.add(f.resolve())
                    yield f
        elif isinstance(item, Iterable):
            for i in item:
                yield from walk(i)
        else:
            raise TypeError(f"unsupported source {type(item).__name__}: a path, array or list")

    return walk(source)


def count_frames(source: Any, every: int = 1, skip: Path | None = None) -> int | None:
    """How many images or frames ``source`` yields (for progress bars); None if unknown."""
    total = 0
    try:
        for item in iter_sources(source, skip, quiet=True):
            if isinstance(item, Path) and item.suffix.lower() in VIDEO_SUFFIXES:
                import cv2

                cap = cv2.VideoCapture(str(item))
                n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                cap.release()
                if n <= 0:
                    return None
                total += (n + every - 1) // every
            else:  # an image, an array, or an empty folder's error record
                total += 1
    except TypeError:
        return None
    return total
