"""Tiny synthetic datasets written to tmp_path, and a few hundred real FER-2013 rows."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_CSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fer2013.csv.gz"


def write_csv(path: Path, rows: list[tuple[int, np.ndarray, str]]) -> Path:
    lines = ["emotion,pixels,Usage"]
    for label, img, usage in rows:
        lines.append(f'{label},"{" ".join(map(str, img.reshape(-1)))}",{usage}')
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def synthetic_rows(per_class: int = 2, seed: int = 0) -> list[tuple[int, np.ndarray, str]]:
    """per_class faces per class and usage; each class has its own mean brightness."""
    rng = np.random.default_rng(seed)
    rows = []
    for usage in ("Training", "PublicTest", "PrivateTest"):
        for c in range(7):
            for _ in range(per_class):
                img = np.clip(rng.normal(30 + 30 * c, 10, (48, 48)), 0, 255).astype(np.uint8)
                rows.append((c, img, usage))
    return rows


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    """42 rows: 2 per class in each of Training, PublicTest and PrivateTest."""
    return write_csv(tmp_path / "tiny.csv", synthetic_rows())


@pytest.fixture(scope="session")
def real_csv(tmp_path_factory) -> Path:
    """420 real Training rows, 140 PublicTest and 140 PrivateTest from FER-2013."""
    if not REAL_CSV.is_file():
        pytest.skip(f"{REAL_CSV} not found")
    want = {"Training": 420, "PublicTest": 140, "PrivateTest": 140}
    out = ["emotion,pixels,Usage"]
    with gzip.open(REAL_CSV, "rt") as f:
        next(f)
        for line in f:
            usage = line.rstrip().rsplit(",", 1)[1]
            if want.get(usage, 0) > 0:
                want[usage] -= 1
                out.append(line.rstrip())
            if not any(want.values()):
                break
    path = tmp_path_factory.mktemp("real") / "fer_small.csv"
    path.write_text("\n".join(out) + "\n")
    return path


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_model():
    """A real but untrained Classifier: fast, for the mechanics of prediction."""
    import torch

    from ferlab.classifier import Classifier
    from ferlab.models import create_model
    from ferlab.transforms import preprocess_spec

    torch.manual_seed(0)
    return Classifier(
        create_model("vggnet_s", widths=[4, 8, 8, 8]),
        preprocess_spec("minmax"),
        name="vggnet_s",
        meta={"model_kwargs": {"widths": [4, 8, 8, 8]}},
    )


@pytest.fixture(scope="session")
def astronaut():
    """skimage's astronaut (Eileen Collins, NASA, public domain): one smiling face."""
    from skimage import data

    return data.astronaut()


@pytest.fixture
def photo_dir(tmp_path, astronaut):
    """A folder: the astronaut photo, a faceless photo and a nested copy."""
    from skimage import data

    save_image(tmp_path / "photos" / "astronaut.jpg", astronaut)
    save_image(tmp_path / "photos" / "coffee.png", data.coffee())
    save_image(tmp_path / "photos" / "sub" / "astronaut2.png", astronaut[:300, :300])
    return tmp_path / "photos"
