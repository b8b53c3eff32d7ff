"""TrainConfig: every training choice as a plain field; YAML sets it, flags override it."""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DATA = "../shared/data/fer2013.csv.gz"


@dataclass
class TrainConfig:
    # run
    name: str = ""  # run directory name under `out`; "" = <model>-<timestamp>
    out: str = "runs"  # parent folder of run directories
    seed: int = 0  # seeds weights, shuffling, augmentation, and a stratified split and subset
    device: str = "auto"  # auto (cuda if present, else cpu), cpu, cuda, cuda:1
    threads: int = 0  # torch CPU threads; 0 = torch's default
    bf16: bool = False  # bf16 autocast; 14-29x *slower* on AVX2-only CPUs, ~2x with AVX-512 BF16
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and GPU
    # data
    data: str = DEFAULT_DATA  # FER-2013 CSV(.gz), per-image release, or <root>/<label>/ folder
    split: str = "official"  # official (Training/PublicTest/PrivateTest) or stratified 80/10/10
    subset: float = 1.0  # stratified fraction of the training split, to scale studies down
    ignore_unknown: bool = False  # skip unknown class folders instead of failing
    # model
    model: str = "vgg19"  # a name from ferlab.list_models()
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {hidden: 512, dropout: 0.5}
    pretrained: str = ""  # vgg19 only: path to torchvision ImageNet weights, or "imagenet"
    init: str = ""  # start from this network's weights: shipped name, run, checkpoint or export
    frozen_blocks: int = 0  # vgg19 only: convolutional blocks (0..5) kept frozen
    # optimisation (defaults = the report's optimal settings)
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    batch_size: int = 32
    optimizer: str = "adam"  # adam, adamw, sgd
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # plateau (on val loss), cosine, onecycle, none
    plateau_factor: float = 0.5
    plateau_patience: int = 7  # epochs without val-loss improvement before lr *= factor
    min_lr: float = 1e-7
    warmup_epochs: float = 0.3  # onecycle only: warm-up as a fraction of training (< 1) or epochs
    early_stopping: int = 15  # epochs without improvement of `monitor`; 0 = off
    monitor: str = "val_loss"  # val_loss or val_acc: picks best.pt and drives early stopping
    loss: str = "ce"  # ce (categorical cross-entropy) or focal
    focal_gamma: float = 2.0
    focal_alpha: list[float] | None = None  # per-class weights for focal loss, EMOTIONS order
    label_smoothing: float = 0.0  # ce only
    ema: float = 0.0  # decay of a moving average of the weights, validated and saved; 0 = off
    teacher: str = ""  # distil from this model (checkpoint, export or ensemble manifest)
    distill_alpha: float = 0.5  # weight of the teacher's soft targets; labels get 1 - alpha
    distill_temperature: float = 2.0  # softens teacher and student alike (Hinton et al. 2015)
    # preprocessing and augmentation
    normalize: str = "minmax"  # minmax ([0, 1]), none (raw 0..255), standardize (train mean/std)
    augment: bool = True  # master switch for the augmentations below
    hflip: float = 0.5  # probability of a horizontal flip
    rotate: float = 10.0  # degrees, +/-
    shift: float = 0.1  # fraction of the image, +/- in x and y
    shear: float = 10.0  # degrees, +/-
    zoom: float = 0.1  # +/- fraction of the scale
    erase: float = 0.0  # probability of random erasing
    crop: int = 0  # train on random crops of this side (44 of 48, say); tests see centre crops
    mixup: float = 0.0  # Beta alpha of mixup's blend (0.2-1 is usual); 0 = off
    cutmix: float = 0.0  # Beta alpha of CutMix's pasted area (1 is usual); 0 = off
    mix_prob: float = 1.0  # share of batches mixed; with mixup and cutmix both on, half each
    eval_batch_size: int = 512

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            values[key] = _typed(key, value, hints[key])
        for key, n in (("focal_alpha", 7), ("betas", 2)):
            if values.get(key) is not None:
                values[key] = _numbers(key, values[key], n)
        cfg = cls(**values)
        cfg.betas = tuple(cfg.betas)  # type: ignore[assignment]
        _check_ranges(cfg)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: Any) -> TrainConfig:
        in_file = load_yaml_mapping(path) if path else {}
        try:
            return cls.from_dict({**in_file, **overrides})
        except ValueError as e:
            # name the file only for what came from it, not for a flag's value
            key = getattr(e, "key", None)
            blame = path and (key is None or (key in in_file and key not in overrides))
            raise ValueError(f"{path}: {e}" if blame else str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# (test, what it expects) pairs for numeric settings, shared with ferlab.serve's limits
def at_least(low: float) -> tuple[Any, str]:
    return (lambda v: v >= low), f"at least {low:g}"


def _within(low: float, high: float, open_high: bool = False) -> tuple[Any, str]:
    if open_high:
        return (lambda v: low <= v < high), f"in [{low:g}, {high:g})"
    return (lambda v: low <= v <= high), f"in [{low:g}, {high:g}]"


def as_whole(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (numpy integers too; not bools or floats)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


RUNTIME_KEYS = ("threads", "device")  # may change on resume: they do not change the recipe
NOT_RECIPE = {"seed", "out", "name", *RUNTIME_KEYS}
POSITIVE = ((lambda v: v > 0), "above 0")
_PROBABILITY = _within(0, 1)

# each numeric field's range: a value outside fails at startup with its name, not as a
# ZeroDivisionError after the data loads or (early_stopping: -1) as a run that stops at once
RANGES: dict[str, tuple[Any, str]] = {
    "seed": at_least(0),
    "threads": at_least(0),
    "subset": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "frozen_blocks": _within(0, 5),
    "epochs": at_least(1),
    "batch_size": at_least(1),
    "eval_batch_size": at_least(1),
    "lr": POSITIVE,
    "momentum": _within(0, 1, open_high=True),
    "weight_decay": at_least(0),
    "plateau_factor": ((lambda v: 0 < v < 1), "in (0, 1)"),
    "plateau_patience": at_least(0),
    "min_lr": at_least(0),
    "warmup_epochs": at_least(0),
    "early_stopping": at_least(0),
    "focal_gamma": at_least(0),
    "label_smoothing": _within(0, 1, open_high=True),
    "ema": _within(0, 1, open_high=True),
    "distill_alpha": _PROBABILITY,
    "distill_temperature": POSITIVE,
    "hflip": _PROBABILITY,
    "rotate": at_least(0),
    "shift": _within(0, 1, open_high=True),
    "shear": at_least(0),
    "zoom": _within(0, 1, open_high=True),
    "erase": _PROBABILITY,
    "crop": ((lambda v: v == 0 or 16 <= v <= 48), "0 (off) or in [16, 48]"),
    "mixup": at_least(0),
    "cutmix": at_least(0),
    "mix_prob": _PROBABILITY,
}


# each named choice: a misspelt one fails at startup with its key, not after the data loads
CHOICES: dict[str, tuple[str, ...]] = {
    "split": ("official", "stratified"),
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("plateau", "cosine", "onecycle", "none"),
    "monitor": ("val_loss", "val_acc"),
    "loss": ("ce", "focal"),
    "normalize": ("minmax", "none", "standardize"),
}


class ConfigError(ValueError):
    """A bad value of config ``key``."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config {key}: {message}")
        self.key = key


def _check_ranges(cfg: TrainConfig) -> None:
    from .models import list_models

    for key, (ok, expected) in RANGES.items():
        value = getattr(cfg, key)
        if not ok(value) or not math.isfinite(value):  # NaN fails every test; inf this one
            raise ConfigError(key, f"expected a value {expected}, got {value!r}")
    if not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError("betas", f"expected two values in [0, 1), got {list(cfg.betas)}")
    if cfg.focal_alpha is not None and not all(0 <= a < math.inf for a in cfg.focal_alpha):
        raise ConfigError("focal_alpha", f"expected 7 finite weights >= 0, got {cfg.focal_alpha}")
    for key, choices in {**CHOICES, "model": tuple(list_models())}.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(
                key, f"expected one of {', '.join(choices)}, got {getattr(cfg, key)!r}"
            )
    # settings the chosen loss ignores: silently dropping them would train another recipe
    if cfg.loss != "focal" and cfg.focal_alpha is not None:
        raise ConfigError("focal_alpha", f"applies to loss: focal only, got loss: {cfg.loss}")
    if cfg.loss == "focal" and cfg.label_smoothing:
        raise ConfigError("label_smoothing", "applies to loss: ce only, got loss: focal")
    if cfg.scheduler == "onecycle":
        # it cycles momentum (SGD) or beta1 (Adam) between 0.95 and 0.85 itself
        if cfg.optimizer == "sgd" and cfg.momentum != 0.9:
            raise ConfigError("momentum", "scheduler onecycle cycles it from 0.95 to 0.85 and back")
        if cfg.optimizer != "sgd" and cfg.betas[0] != 0.9:
            raise ConfigError("betas", "scheduler onecycle cycles beta1 from 0.95 to 0.85 and back")
        if cfg.warmup_epochs >= max(1, cfg.epochs):
            raise ConfigError(
                "warmup_epochs",
                f"expected fewer than epochs ({cfg.epochs}) warm-up epochs, "
                f"got {cfg.warmup_epochs}",
            )
    if cfg.crop and not cfg.augment:
        raise ConfigError("crop", "applies with augment: true only, got augment: false")
    if cfg.init and cfg.pretrained:
        raise ConfigError("init", "starts from its own weights; drop pretrained")
    for key in ("pretrained", "frozen_blocks"):
        if getattr(cfg, key) and cfg.model != "vgg19":
            raise ConfigError(key, f"applies to model: vgg19 only, got model: {cfg.model}")
    _check_device(cfg.device)
    # a run lives under out: "../x" or "/x" would put it elsewhere
    if cfg.name and (Path(cfg.name).is_absolute() or ".." in Path(cfg.name).parts):
        raise ConfigError("name", f"expected a path under out (no .. or /...), got {cfg.name!r}")
    _check_model_kwargs(cfg)


def _check_device(name: str) -> None:
    """The name's form only: whether this machine has the device is asked when training starts
    (a GPU run's config is read back on CPU machines to evaluate its model)."""
    import torch

    if name != "auto":
        try:
            torch.device(name)
        except (RuntimeError, ValueError):
            raise ConfigError(
                "device", f"expected auto or a PyTorch device (cpu, cuda, cuda:1), got {name!r}"
            ) from None


def _check_model_kwargs(cfg: TrainConfig) -> None:
    """A ``model_kwargs`` key the model does not take fails at startup, not after the data
    and the teacher have loaded."""
    import inspect

    from .models import MODELS, create_model

    kw = dict(cfg.model_kwargs)
    if cfg.frozen_blocks:
        kw["frozen_blocks"] = cfg.frozen_blocks
    if not kw:
        return
    signature = inspect.signature(MODELS[cfg.model])
    try:
        signature.bind(**kw)
    except TypeError as e:
        raise ConfigError("model_kwargs", f"model {cfg.model!r}: {e}") from None
    params = signature.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):  # passed on: only building tells
        try:
            create_model(cfg.model, **kw)  # the small models build in milliseconds
        except (ValueError, TypeError, RuntimeError) as e:  # widths: 8; torch: "negative dimension"
            raise ConfigError("model_kwargs", str(e)) from None


def recipe_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The recipe keys on which two saved configs differ: seeds, paths and runtime keys
    aside, and defaults filled in for keys an older ferlab did not write."""
    defaults = TrainConfig().to_dict()
    # through JSON, as result.json holds them: a tuple default and a saved list are equal
    a, b = (json.loads(json.dumps({**defaults, **x})) for x in (a, b))
    return sorted(k for k in (a.keys() | b.keys()) - NOT_RECIPE if a.get(k) != b.get(k))


class _UniqueKeys(yaml.SafeLoader):
    """safe_load, but a key written twice is an error: YAML keeps the last one silently, so
    an ``lr:`` added at the end of a long config would override the first without a word."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} if empty), or one line naming the file."""
    try:
        loaded = yaml.load(Path(path).read_text(), _UniqueKeys)  # a SafeLoader: no objects
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (expected a YAML file)") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder (expected a YAML file)") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not text (expected a UTF-8 YAML file)") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of keys, got {type(loaded).__name__}")
    return loaded or {}


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type, or a one-line error: a wrong type would otherwise fail
    hours into a run (``early_stopping: "3"``) or pass silently (``augment: "no"`` is true)."""
    if value is None and type(None) in typing.get_args(hint):
        return None
    kind = typing.get_origin(hint) or hint
    if kind in (typing.Union, types.UnionType):  # list[float] | None with a value
        kind = typing.get_origin(typing.get_args(hint)[0]) or typing.get_args(hint)[0]
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(key, f"expected {kind.__name__}, got {value!r}")
    if kind in (int, float):
        try:  # YAML 1.1 reads "1e-4" as a string, and 64.0 or 5 may stand for 64 or 5.0
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
        if kind is int:
            if not number.is_integer():
                raise ConfigError(key, f"expected a whole number, got {value!r}")
            return int(number)
        return number
    if kind is str and isinstance(value, int | float | os.PathLike):
        return str(value)  # a run named 2024, or data given as a Path
    expected = {tuple: list | tuple, list: list | tuple}.get(kind, kind)
    if not isinstance(value, expected):
        raise ConfigError(key, f"expected {kind.__name__}, got {value!r}")
    return value


def _numbers(key: str, value: Any, n: int) -> list[float]:
    """``n`` numbers (YAML 1.1 reads ``1e-3`` as a string, taken as meant), else one line."""
    try:
        if len(value) != n or any(isinstance(v, bool) for v in value):
            raise ValueError
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected {n} numbers, got {value!r}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``key=value`` with the value typed as the field's type (YAML syntax)."""
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    hints = typing.get_type_hints(TrainConfig)
    if key not in hints:
        raise ValueError(f"unknown config key {key!r}")
    if hints[key] is str:
        return key, raw  # keep numeric-looking names as strings
    try:  # typed and checked with the file's values, as the file's are (1e-4, 1e2, 10.0)
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ValueError(f"--set {key}: cannot read {raw!r} as YAML") from None
