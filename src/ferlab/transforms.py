"""Preprocessing and batched augmentation on tensors, on the device the model runs on.

Faces arrive as uint8 ``(N, 48, 48)``. :func:`to_input` turns them into model input
``(N, 1, 48, 48)`` with the checkpoint's normalisation; :class:`Augment` applies random
flip, rotation, shift, shear, zoom and erasing to a whole batch at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F

from .config import CHOICES, as_whole

NORMALIZATIONS = CHOICES["normalize"]  # minmax, none, standardize


def preprocess_spec(normalize: str, images: torch.Tensor | None = None, crop: int = 0) -> dict:
    """The preprocessing stored with a model; ``standardize`` takes mean/std from ``images``.
    ``crop``: the side of the random crops the model was trained on; it then sees the centre
    crop of each 48x48 face (see :func:`fit_input`)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {NORMALIZATIONS}")
    mean, std = 0.0, 1.0
    if normalize == "standardize":
        if images is None:
            raise ValueError("standardize needs training images to compute mean and std")
        x = images.float() / 255
        mean, std = float(x.mean()), float(x.std())
    spec = {"size": 48, "channels": 1, "normalize": normalize, "mean": mean, "std": std}
    return {**spec, "crop": crop} if crop else spec  # older models' specs have no crop


def check_preprocess(spec: dict, where: str = "") -> dict:
    """A model's stored preprocessing, refused (naming ``where``, its file) if it names an
    unknown normalisation or a standardisation that cannot be applied: a typo would otherwise
    run as minmax."""
    prefix = f"{where}: " if where else ""
    if not isinstance(spec, dict) or spec.get("normalize") not in NORMALIZATIONS:
        got = spec.get("normalize") if isinstance(spec, dict) else spec
        raise ValueError(
            f"{prefix}preprocess normalize: expected one of {NORMALIZATIONS}, got {got!r}"
        )
    crop = spec.get("crop", 0)
    if as_whole(crop) is None or not 0 <= crop <= 48:
        raise ValueError(f"{prefix}preprocess crop: expected a side in [0, 48], got {crop!r}")
    if spec["normalize"] == "standardize":
        mean, std = spec.get("mean", math.nan), spec.get("std", math.nan)
        # numpy and tensor scalars are numbers too; a string is not, though float() takes
        # "0.5": it would load, then fail at the first prediction (a tensor minus a str)
        try:
            ok = float(std) > 0 and all(
                isinstance(v, Real | torch.Tensor)
                and not isinstance(v, bool)
                and math.isfinite(float(v))
                for v in (mean, std)
            )
        except (TypeError, ValueError):  # None, or a tensor of several values
            ok = False
        if not ok:
            raise ValueError(
                f"{prefix}preprocess standardize: needs a finite numeric mean and std > 0, "
                f"got {mean!r}, {std!r}"
            )
    return spec


def scale(x01: torch.Tensor, spec: dict) -> torch.Tensor:
    """Map [0, 1] images to the model's input range."""
    if spec["normalize"] == "none":
        return x01 * 255  # the report's "without normalisation" ablation: raw 0..255
    if spec["normalize"] == "standardize":
        return (x01 - spec["mean"]) / spec["std"]
    if spec["normalize"] == "minmax":
        return x01
    raise ValueError(f"unknown normalize {spec['normalize']!r}; expected one of {NORMALIZATIONS}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W)`` to float ``(N, 1, H, W)`` in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


def to_input(images: torch.Tensor, spec: dict) -> torch.Tensor:
    return scale(to_float(images), spec)


def fit_input(x: torch.Tensor, spec: dict) -> torch.Tensor:
    """The centre crop of a batch ``(N, C, 48, 48)`` that a model trained on random crops
    sees (``spec["crop"]``); the batch itself for other models.

    Applied after :func:`tta_views`, so ``shift`` moves the crop window over real pixels.
    Whole faces are no substitute: a ``vggnet_s`` trained on 44-pixel crops scored 26% on
    48-pixel PublicTest faces and 61.5% on their centre crops (epoch 9)."""
    side = spec.get("crop", 0)
    if not side or x.shape[-1] <= side:
        return x
    top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    return x[..., top : top + side, left : left + side]


TTA_MODES = ("none", "flip", "shift")
SHIFTS = ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2))  # pixels (dx, dy)


def check_tta(tta: str | None, own: str = "none") -> str:
    """A valid TTA mode; None means ``own``, a model's own views ("none" unless given)."""
    if tta is None:
        return own
    if tta not in TTA_MODES:
        raise ValueError(f"unknown tta {tta!r}; expected one of {', '.join(TTA_MODES)}")
    return tta


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a batch ``(N, C, H, W)`` whose predictions test-time augmentation averages.

    ``flip``: the batch and its mirror. ``shift``: the flip pair at the centre and moved 2
    pixels left, right, up and down (edges repeated), 10 views, chosen on PublicTest over
    44-pixel ten-crop, which the full-face training never sees.
    """
    if check_tta(tta) == "none":
        return [x]
    views = [x]
    if tta == "shift":
        pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
        h, w = x.shape[-2:]
        views = [pad[..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w] for dx, dy in SHIFTS]
    return views + [v.flip(-1) for v in views]


def mean_log_probs(logits: list[torch.Tensor]) -> torch.Tensor:
    """The mean over views of each view's float32 log-probabilities: what TTA returns."""
    return torch.stack([F.log_softmax(z.float(), 1) for z in logits]).mean(0)


@dataclass
class Augment:
    """Random affine + erasing for a batch, parameters drawn from ``generator``.

    Ranges follow Keras' ImageDataGenerator used in the report: ``rotate`` and ``shear`` in
    degrees, ``shift`` as a fraction of the size, ``zoom`` as +/- fraction of the scale.
    """

    hflip: float = 0.5
    rotate: float = 10.0
    shift: float = 0.1
    shear: float = 10.0
    zoom: float = 0.1
    erase: float = 0.0  # probability of erasing one random rectangle (2-20% of the area)
    crop: int = 0  # side of a random square crop, taken in the same resampling; 0 = none

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) * (hi - lo) + lo

        flip = torch.where(torch.rand(n, generator=generator) < self.hflip, -1.0, 1.0)
        angle = uniform(-self.rotate, self.rotate) * math.pi / 180
        shear = uniform(-self.shear, self.shear) * math.pi / 180
        zoom = uniform(1 - self.zoom, 1 + self.zoom)
        tx, ty = uniform(-self.shift, self.shift) * 2, uniform(-self.shift, self.shift) * 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        # theta maps output coords to input coords: R(angle) @ Shear @ diag(flip, 1) / zoom
        a = (cos * flip) / zoom
        b = (-sin + cos * torch.tan(shear)) / zoom
        c = (sin * flip) / zoom
        d = (cos + sin * torch.tan(shear)) / zoom
        theta = torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1)
        size = list(x.shape)
        if self.crop:
            # a crop is one more affine map, applied first: q in the crop's [-1, 1] is
            # p = s q + t in the full face's, with s = crop / side and |t| <= 1 - s
            s = self.crop / x.shape[-1]
            t = torch.stack([uniform(s - 1, 1 - s), uniform(s - 1, 1 - s)], 1)
            theta = torch.cat(
                [theta[:, :, :2] * s, theta[:, :, :2] @ t[:, :, None] + theta[:, :, 2:]], 2
            )
            size[-2:] = [self.crop, self.crop]
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, size, align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.erase > 0:
            out = self._erase(out, generator)
        return out

    def _erase(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        area = torch.rand(n, generator=generator) * 0.18 + 0.02
        aspect = torch.exp((torch.rand(n, generator=generator) - 0.5) * 2 * math.log(3))
        eh = (torch.sqrt(area * aspect) * h).clamp(1, h)
        ew = (torch.sqrt(area / aspect) * w).clamp(1, w)
        y0 = torch.rand(n, generator=generator) * (h - eh)
        x0 = torch.rand(n, generator=generator) * (w - ew)
        on = torch.rand(n, generator=generator) < self.erase
        fill = torch.rand(n, generator=generator)
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        mask = (
            (ys >= y0.view(-1, 1, 1))
            & (ys < (y0 + eh).view(-1, 1, 1))
            & (xs >= x0.view(-1, 1, 1))
            & (xs < (x0 + ew).view(-1, 1, 1))
            & on.view(-1, 1, 1)
        )
        mask = mask.unsqueeze(1).to(x.device)
        return torch.where(mask, fill.view(-1, 1, 1, 1).to(x.device, x.dtype), x)
