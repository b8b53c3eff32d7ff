"""What a training run is made of (data, model, optimiser, ...), built from its config,
and how it goes into a checkpoint and comes back out for an exact resume."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed
from .checkpoint import first_problem
from .classifier import Classifier, load_model
from .config import TrainConfig
from .data import EMOTIONS, load_dataset, split_dataset, stratified_subset
from .ema import EMA
from .losses import create_loss
from .mix import Mix
from .models import create_model
from .optim import create_optimizer, create_scheduler
from .transforms import Augment, preprocess_spec

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """The config's device, refused in one line when this machine has none such: CUDA would
    otherwise fail as a traceback once the data had loaded."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device, count = torch.device(name), torch.cuda.device_count()  # 0 without CUDA
    if device.type == "cuda" and (device.index or 0) >= count:
        raise ValueError(f"config device: {name} is not on this machine ({count} CUDA devices)")
    return device


def load_splits(cfg: TrainConfig, with_test: bool = False) -> dict[str, torch.Tensor]:
    """uint8 images and int64 labels as CPU tensors: train (subset applied), val, test."""
    splits = split_dataset(load_dataset(cfg.data, cfg.ignore_unknown), cfg.split, cfg.seed)
    splits["train"] = stratified_subset(splits["train"], cfg.subset, cfg.seed)
    out = {}
    for key in ("train", "val", "test") if with_test else ("train", "val"):
        out[f"{key}_x"] = torch.from_numpy(splits[key].images)
        out[f"{key}_y"] = torch.from_numpy(splits[key].labels)
    return out


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    kw = dict(cfg.model_kwargs)
    if cfg.pretrained or cfg.frozen_blocks:  # vgg19 only: checked with the config
        kw.update(pretrained=cfg.pretrained or None, frozen_blocks=cfg.frozen_blocks)
    return kw


def init_weights(cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights and preprocessing of ``cfg.init``, the network a run starts from; one line
    naming it when that network is not the one the config trains. A fine-tuned network keeps
    the input scaling its weights were trained with."""
    where = f"config init: {cfg.init}"
    try:
        source = load_model(cfg.init)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"config init: {e}") from None
    if not isinstance(source, Classifier):
        raise ValueError(
            f"{where}: expected one network (a shipped name, run, checkpoint or safetensors "
            f"export), got {type(source).__name__}"
        )
    if source.name != cfg.model:
        raise ValueError(f"{where}: is {source.name}, the config trains {cfg.model}")
    if list(source.classes) != list(EMOTIONS):
        raise ValueError(f"{where}: has classes {list(source.classes)}, expected {list(EMOTIONS)}")
    spec = source.preprocess
    if (spec["normalize"], spec.get("crop", 0)) != (cfg.normalize, cfg.crop):
        raise ValueError(
            f"{where}: was trained with normalize {spec['normalize']}, crop {spec.get('crop', 0)}; "
            f"the config has normalize {cfg.normalize}, crop {cfg.crop}"
        )
    state = source.model.state_dict()
    model = create_model(cfg.model, num_classes=len(EMOTIONS), **model_kwargs(cfg))
    try:  # now, not after the data has loaded
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{where}: its weights do not fit {cfg.model} with model_kwargs "
            f"{cfg.model_kwargs} ({first_problem(e)})"
        ) from None
    return state, spec


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    # A last batch with one sample per process would break batch norm in train mode: drop it.
    return n // batch_size + (1 if n % batch_size >= 2 * world else 0)


@dataclass
class Parts:
    """What one training run is made of, built from its config."""

    model: nn.Module
    net: nn.Module  # what trains: the model, or its DistributedDataParallel wrapper
    dist: distributed.Dist
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    augment: Augment | None
    mix: Mix | None  # mixup / CutMix, after the augmentation
    ema: EMA | None  # when on, the averaged copy is what is validated and saved
    spec: dict  # preprocessing, saved with the model
    generator: torch.Generator  # shuffling and augmentation; saved for exact resume
    kwargs: dict[str, Any]  # model kwargs


def check_batch_size(batch_size: int, world: int) -> None:
    """Every process takes an equal share of the global batch."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world} processes")


def build_parts(
    cfg: TrainConfig,
    data: dict[str, torch.Tensor],
    device: torch.device,
    d: distributed.Dist = distributed.Dist(),
    init: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> Parts:
    """``init``: the weights and preprocessing to start from (:func:`init_weights`)."""
    check_batch_size(cfg.batch_size, d.world)
    kwargs = model_kwargs(cfg)
    model = create_model(cfg.model, num_classes=len(EMOTIONS), **kwargs)
    if init is not None:
        model.load_state_dict(init[0])
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net = distributed.wrap(model, d, device)
    model = getattr(net, "module", net)
    optimizer = create_optimizer(cfg, model)
    steps = steps_per_epoch(len(data["train_y"]), cfg.batch_size, d.world)
    loss_fn = create_loss(cfg.loss, cfg.focal_gamma, cfg.focal_alpha, cfg.label_smoothing)
    augment, mix = None, Mix(cfg.mixup, cfg.cutmix, cfg.mix_prob)  # Mix checks its values
    if cfg.augment:
        augment = Augment(
            cfg.hflip, cfg.rotate, cfg.shift, cfg.shear, cfg.zoom, cfg.erase, cfg.crop
        )
    return Parts(
        model,
        net,
        d,
        optimizer,
        create_scheduler(cfg, optimizer, steps),
        loss_fn.to(device),
        augment,
        mix if cfg.augment and mix.active else None,
        EMA(model, cfg.ema) if cfg.ema else None,
        init[1] if init is not None else preprocess_spec(cfg.normalize, data["train_x"], cfg.crop),
        torch.Generator().manual_seed(cfg.seed),
        kwargs,
    )


def eval_model(parts: Parts) -> nn.Module:
    return parts.ema.module if parts.ema is not None else parts.model


def rng_state() -> dict[str, Any]:
    """This process's global RNG states: CPU, and the current GPU's (dropout draws there)."""
    cuda = torch.cuda.is_initialized()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None}


def make_checkpoint(
    cfg: TrainConfig,
    parts: Parts,
    state: dict[str, Any],
    val_acc: float,
    val_loss: float,
    ranks_rng: list[dict[str, Any]] | None = None,
    paths: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A plain dict: enough to rebuild the model without the CLI, and to resume exactly.
    ``ranks_rng``: every rank's :func:`rng_state` in a distributed run. ``paths``: the
    absolute forms of the run's input files (``train.input_paths``)."""
    return {
        "model_name": cfg.model,
        "model_kwargs": {
            k: v for k, v in parts.kwargs.items() if k not in ("pretrained", "frozen_blocks")
        },
        "classes": list(EMOTIONS),
        "preprocess": parts.spec,
        "config": cfg.to_dict(),
        "paths": paths or {},
        "model": eval_model(parts).state_dict(),  # what load_model() uses
        **(
            {"train_model": parts.model.state_dict(), "ema_updates": parts.ema.updates}
            if parts.ema is not None
            else {}
        ),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "state": dict(state),
        "metrics": {"val_acc": val_acc, "val_loss": val_loss},
        "rng": {
            **rng_state(),
            "generator": parts.generator.get_state(),
            **({"ranks": ranks_rng} if ranks_rng and len(ranks_rng) > 1 else {}),
        },
    }


def restore(ckpt: dict[str, Any], parts: Parts, rank: int = 0) -> dict[str, Any]:
    """Load a checkpoint's weights, optimiser, scheduler and RNG states (``rank``'s own in a
    distributed run; a rank the saved run did not have keeps its own); return its state."""
    parts.model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
    parts.spec = ckpt["preprocess"]  # a fine-tuned run's came from its init, not its data
    if parts.ema is not None:
        parts.ema.module.load_state_dict(ckpt["model"])
        parts.ema.updates = ckpt["ema_updates"]
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.scheduler is not None:
        saved = ckpt["scheduler"]
        for key in ("total_steps", "T_max"):  # onecycle's and cosine's length in batches
            now = getattr(parts.scheduler, key, None)
            if key in saved and saved[key] != now:
                # another --nproc, or a folder that grew: onecycle would fail past its end
                # and cosine would climb again
                raise ValueError(
                    f"the saved run's schedule lasts {saved[key]} batches, this launch's "
                    f"{now}: resume with the process count (--nproc) and data it started with"
                )
        parts.scheduler.load_state_dict(saved)
    parts.generator.set_state(ckpt["rng"]["generator"])
    ranks = ckpt["rng"].get("ranks") or [ckpt["rng"]]  # a single process saved only its own
    # A rank the saved run did not have (resumed with more processes) keeps the stream train()
    # seeded for it: rank 0's would give it rank 0's dropout masks.
    if rank < len(ranks):  # each rank continues its own dropout stream, on its own device
        torch.set_rng_state(ranks[rank]["torch"])
        cuda = ranks[rank].get("cuda")
        if isinstance(cuda, list):  # checkpoints before session 12: every GPU's, or [] on CPU
            if cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda)
        elif cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)
    return ckpt["state"]
