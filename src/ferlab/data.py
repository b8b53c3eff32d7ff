"""FER-2013 and image-folder datasets, held in memory as one uint8 array.

Every loader returns a :class:`FaceData`: ``images`` ``(N, 48, 48)`` uint8, ``labels``
``(N,)`` int64 in :data:`EMOTIONS` order, and ``usage`` ``(N,)`` strings naming the
official split of each row ("" when the source has none).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from .faces import crop_centre

log = logging.getLogger(__name__)

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SIZE = 48
USAGES = ("Training", "PublicTest", "PrivateTest")
SYNONYMS = {
    "anger": "angry",
    "angry": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": "neutral",
    "contempt": "",  # AffectNet/CK+ class with no FER-2013 counterpart: unknown
}


class DataError(ValueError):
    """Bad input data; the message names the file, line or path and what was expected."""


@dataclass
class FaceData:
    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, index into EMOTIONS
    usage: np.ndarray  # (N,) str: Training / PublicTest / PrivateTest, or "" if unknown
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> FaceData:
        return FaceData(self.images[index], self.labels[index], self.usage[index], self.source)

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(EMOTIONS))


def label_index(name: str) -> int | None:
    """Map a folder name (any case, common synonyms) to an EMOTIONS index, or None."""
    canonical = SYNONYMS.get(name.strip().lower())
    return EMOTIONS.index(canonical) if canonical else None


# ---------------------------------------------------------------- FER-2013 CSV


def _cache_dir() -> Path:
    root = os.environ.get("FERLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ferlab"
    )
    return Path(root)


def _fingerprint(files: list[Path]) -> str:
    """Changes when any file is added, removed, resized or touched."""
    lines = []
    for f in files:
        st = f.stat()
        lines.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(lines)


def _cached(key: str, source: str, parse) -> FaceData:
    """``parse()`` once per ``key``; later loads read the arrays from the npz cache."""
    cache_file = _cache_dir() / f"{hashlib.sha1((key + '|v1').encode()).hexdigest()[:20]}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                return FaceData(z["images"], z["labels"], z["usage"], source)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            log.warning("ignoring unreadable cache %s", cache_file)
    data = parse()
    buf = io.BytesIO()
    np.savez(buf, images=data.images, labels=data.labels, usage=data.usage)
    try:
        atomic_write_bytes(cache_file, buf.getvalue())
    except OSError as e:  # a read-only home must not stop training
        log.warning("could not write cache %s: %s", cache_file, e)
    return data


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash leaves old or new
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
        try:
            os.replace(tmp, path)
        except OSError as e:  # named as the file the user knows, not as the hidden temp file
            raise OSError(e.errno, f"{path}: cannot write it ({e.strerror})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_pixels(text: str, where: str) -> np.ndarray:
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):  # "x", or a number past int64
        raise DataError(f"{where}: 'pixels' must be 2304 integers in 0..255") from None
    if values.size != SIZE * SIZE:
        raise DataError(f"{where}: 'pixels' has {values.size} values, expected 2304 (48x48)")
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{where}: 'pixels' has values outside 0..255")
    return values.astype(np.uint8).reshape(SIZE, SIZE)


def _parse_csv(path: Path) -> FaceData:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        # utf-8-sig: Excel starts its UTF-8 CSVs with a byte-order mark, which would
        # otherwise be part of the first column's name
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"emotion", "pixels"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                    "expected header emotion,pixels,Usage"
                )
            images, labels, usage = [], [], []
            blank = 0  # the first row without a Usage
            for row in reader:
                row_no = reader.line_num  # the file's line: blank lines are not rows
                where = f"{path}, line {row_no}"
                try:
                    label = int(row["emotion"])
                except (TypeError, ValueError):
                    label = -1
                if not 0 <= label < len(EMOTIONS):
                    raise DataError(f"{where}: 'emotion' is {row['emotion']!r}, expected 0..6")
                images.append(_parse_pixels(row["pixels"] or "", where))
                labels.append(label)
                usage.append((row.get("Usage") or "").strip())
                if usage[-1] not in (*USAGES, ""):
                    raise DataError(
                        f"{where}: 'Usage' is {usage[-1]!r}, expected one of {', '.join(USAGES)}"
                    )
                blank = blank or (row_no if not usage[-1] else 0)
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as a FER-2013 CSV ({e})") from None
    if not images:
        raise DataError(f"{path}: no data rows")
    if blank and any(usage):  # it would silently belong to none of the official splits
        raise DataError(
            f"{path}, line {blank}: 'Usage' is empty, expected one of {', '.join(USAGES)} "
            "(other rows have one)"
        )
    return FaceData(np.stack(images), np.array(labels, dtype=np.int64), np.array(usage), str(path))


def load_fer2013_csv(path: str | Path, cache: bool = True) -> FaceData:
    """Load the canonical FER-2013 CSV (plain or gzip); parsed arrays are cached on disk."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not cache:
        return _parse_csv(path)
    # "usage2": arrays cached before rows were checked one by one (a blank Usage among others)
    # are parsed again
    return _cached("usage2|" + _fingerprint([path]), str(path), lambda: _parse_csv(path))


# ---------------------------------------------------------------- image folders


# formats photos and cameras produce (JPEG covers MPO) and PGM/PPM of face datasets; never
# EPS (Pillow hands it to Ghostscript) or rarer decoders, whatever a file's name says.
# init() registers every plugin; the list keeps those this Pillow has.
Image.init()
IMAGE_FORMATS = tuple(
    f for f in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM") if f in Image.OPEN
)
# the file names those decoders claim (.jpg, .png, .webp, .tif, .pgm, ...): folders of faces
# to train on and folders to recognise take the same files
IMAGE_SUFFIXES = tuple(
    sorted(e for e, f in Image.registered_extensions().items() if f in IMAGE_FORMATS)
)


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
    """``Image.open`` limited to :data:`IMAGE_FORMATS`, for every decoder of ferlab."""
    return Image.open(source, formats=IMAGE_FORMATS)


# EXIF orientation -> the transpose that turns the stored pixels upright (as Pillow's
# ImageOps.exif_transpose maps them); 1 and unknown values: as stored
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (0x0112) of ``im``; 1 (upright) when its EXIF is unreadable.
    Not ``ImageOps.exif_transpose``: it also rewrites the EXIF and raises struct.error on a
    badly typed tag (Pillow issue #8965), which would make a viewable photo unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # any parse error of untrusted metadata: the pixels are still fine
        return 1
    return value if isinstance(value, int) else 1


def upright_8bit(im: Image.Image) -> Image.Image:
    """``im`` turned upright by its EXIF orientation, 16-bit and float images rescaled to
    8 bits: PIL's own ``convert("L")`` or ``("RGB")`` clips them, turning a 16-bit photo white.
    Every decoder (datasets, ``predict``, the server) goes through here."""
    im.load()  # Pillow turns a TIFF upright as it loads it, and drops its tag: not twice
    turn = _ORIENTATION.get(_orientation(im))
    if turn is not None:
        im = im.transpose(turn)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        x = np.asarray(im, dtype=np.float64).clip(0)
        peak = float(x.max()) if x.size else 0.0
        if im.mode == "F" and peak <= 1.0:  # float images are mostly 0..1
            top = 1.0
        else:
            top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
        return Image.fromarray(np.round(x * (255.0 / top)).astype(np.uint8))
    return im


def read_image(path: Path, size: int = SIZE) -> np.ndarray:
    """Read any image as a ``size`` x ``size`` uint8 grayscale array (centre square crop),
    with the same pixels as ``predict --no-detect`` gives the model for that file."""
    try:
        with open_image(path) as src:
            rgb = np.asarray(upright_8bit(src).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    return crop_centre(rgb, size)


def _usage_from_name(name: str, default: str) -> str:
    for u in USAGES:
        if name.startswith(u + "_"):
            return u
    return default


def _iter_class_dirs(root: Path, ignore_unknown: bool) -> Iterator[tuple[Path, int]]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [d.name for d in dirs if label_index(d.name) is None]
    if unknown and not ignore_unknown:
        raise DataError(
            f"{root}: unknown class folder(s) {unknown}; expected names among "
            f"{sorted(k for k, v in SYNONYMS.items() if v)} (to skip them: ignore_unknown: true, "
            "or --ignore-unknown for `ferlab evaluate` and `ferlab data info`)"
        )
    for d in dirs:
        idx = label_index(d.name)
        if idx is not None:
            yield d, idx


def hidden(path: Path, root: Path) -> bool:
    """Is ``path`` hidden below ``root``: macOS's ``._x.jpg``, a ``.thumbnails/`` copy, a
    ``.ipynb_checkpoints/`` one? None of them is an input."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def load_image_folder(
    root: str | Path, ignore_unknown: bool = False, default_usage: str = ""
) -> FaceData:
    """Load ``root/<label>/*`` images (:data:`IMAGE_SUFFIXES`); usage from FER-2013 file-name
    prefixes.

    Decoded arrays are cached like the CSV's, keyed by every file's path, size and mtime.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    files = [
        (f, idx)
        for d, idx in _iter_class_dirs(root, ignore_unknown)
        for f in sorted(d.rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES and not hidden(f, d) and f.is_file()
    ]
    if not files:
        raise DataError(f"{root}: no images found; expected <label>/*.jpg (or png, webp, ...)")

    def parse() -> FaceData:
        return FaceData(
            np.stack([read_image(f) for f, _ in files]),
            np.array([idx for _, idx in files], dtype=np.int64),
            np.array([_usage_from_name(f.name, default_usage) for f, _ in files]),
            str(root),
        )

    # "crop2": arrays cached before read_image cropped as predict does (and before it honoured
    # EXIF and 16 bits) are decoded again. The labels are part of the key: a symlink moved
    # from happy/ to sad/ resolves to the same file, size and mtime
    labels = ",".join(str(idx) for _, idx in files)
    key = f"crop2|{default_usage}|{labels}|" + _fingerprint([f for f, _ in files])
    return _cached(key, str(root), parse)


def load_dataset(path: str | Path, ignore_unknown: bool = False) -> FaceData:
    """Load FER-2013 CSV(.gz), the per-image release (train/, test/), or a labelled folder."""
    path = Path(path)
    if path.is_file():
        return load_fer2013_csv(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if (path / "train").is_dir() and (path / "test").is_dir():  # the per-image release
        # FER-2013's has train/ and test/; a val/ beside them (other datasets) selects, and
        # test/ is then held out. File-name prefixes (PrivateTest_1.jpg) override either
        val = next((path / n for n in ("val", "valid", "validation") if (path / n).is_dir()), None)
        sets = [
            (path / "train", "Training"),
            (path / "test", "PrivateTest" if val else "PublicTest"),
        ]
        if val:
            sets.insert(1, (val, "PublicTest"))
        loaded = [load_image_folder(p, ignore_unknown, default_usage=u) for p, u in sets]
        return FaceData(
            np.concatenate([d.images for d in loaded]),
            np.concatenate([d.labels for d in loaded]),
            np.concatenate([d.usage for d in loaded]),
            str(path),
        )
    return load_image_folder(path, ignore_unknown)


# ---------------------------------------------------------------- splits


def split_dataset(data: FaceData, split: str = "official", seed: int = 0) -> dict[str, FaceData]:
    """Return ``{"train", "val", "test"}``.

    ``official``: Training / PublicTest / PrivateTest. ``stratified``: the report's 80/10/10
    stratified hold-out over all rows, reproducible for a given seed.
    """
    if split == "official":
        if not (data.usage == "Training").any() or not (data.usage == "PublicTest").any():
            raise DataError(
                f"{data.source}: split 'official' needs Training and PublicTest rows; "
                "use split 'stratified' for data without FER-2013 usage"
            )
        names = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
        return {k: data.subset(np.flatnonzero(data.usage == u)) for k, u in names.items()}
    if split == "stratified":
        from sklearn.model_selection import train_test_split

        if len(data) < 10:
            raise DataError(f"{data.source}: {len(data)} faces; a stratified split needs 10")
        index = np.arange(len(data))
        counts = data.counts()
        # 10% test and 10% val hold a face of every class only if each has 10
        strat = data.labels if counts[counts > 0].min() >= 10 else None
        if strat is None:
            few = ", ".join(f"{EMOTIONS[c]} {n}" for c, n in enumerate(counts) if 0 < n < 10)
            log.warning("%s: not stratified (fewer than 10 faces: %s)", data.source, few)
        train, rest = train_test_split(index, test_size=0.2, random_state=seed, stratify=strat)
        strat_rest = data.labels[rest] if strat is not None else None
        val, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=strat_rest)
        return {"train": data.subset(train), "val": data.subset(val), "test": data.subset(test)}
    raise ValueError(f"unknown split {split!r}; expected 'official' or 'stratified'")


def stratified_subset(data: FaceData, fraction: float, seed: int = 0) -> FaceData:
    """A reproducible class-stratified fraction of ``data`` (used to scale studies down)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return data
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(EMOTIONS)):
        idx = np.flatnonzero(data.labels == c)
        n = max(1, round(len(idx) * fraction)) if len(idx) else 0
        keep.append(rng.permutation(idx)[:n])
    return data.subset(np.sort(np.concatenate(keep)))
