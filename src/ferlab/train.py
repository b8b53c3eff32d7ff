"""train(cfg) -> run_dir: data, model, optimiser, optional resume, then epochs.

A run directory holds config.yaml, metrics.csv (one row per epoch), last.pt, best.pt and
curves.png. ``train(cfg, resume=run_dir)`` continues from last.pt with the optimiser,
scheduler, early-stopping and RNG states restored, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import distributed
from .checkpoint import copy_atomic, load_checkpoint, save_checkpoint
from .classifier import model_file, shipped_models
from .config import RUNTIME_KEYS, TrainConfig
from .data import EMOTIONS, atomic_write_bytes
from .distill import distill_loss, teacher_probs
from .evaluate import evaluate_logits, predict_logits
from .history import read_history, write_history
from .mix import blend
from .models import create_model
from .parts import (
    Parts,
    build_parts,
    check_batch_size,
    eval_model,
    init_weights,
    load_splits,
    make_checkpoint,
    model_kwargs,
    resolve_device,
    restore,
    rng_state,
    steps_per_epoch,
)
from .pickles import load_tensors
from .transforms import scale, to_float

log = logging.getLogger(__name__)


def train_one_epoch(
    parts: Parts, data: dict[str, torch.Tensor], cfg: TrainConfig, device: torch.device, desc=""
) -> dict[str, float]:
    """One pass over the training split; returns mean loss and accuracy."""
    net, optimizer, scheduler, d = parts.net, parts.optimizer, parts.scheduler, parts.dist
    net.train()
    x_all, y_all, soft_all = data["train_x"], data["train_y"], data.get("train_soft")
    n = len(y_all)
    perm = torch.randperm(n, generator=parts.generator)
    steps = steps_per_epoch(n, cfg.batch_size, d.world)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    quiet = not log.isEnabledFor(logging.INFO) or os.environ.get("FERLAB_PROGRESS") == "0"
    bar = tqdm(
        range(steps),
        desc=desc,
        leave=False,
        unit="batch",
        mininterval=1.0,
        # None: tqdm's own "off unless stderr is a terminal", so nohup logs keep epoch lines only
        disable=True if quiet else None,
    )
    for step in bar:
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = to_float(x_all[idx].to(device, non_blocking=True))
        y = y_all[idx].to(device, non_blocking=True)
        soft = soft_all[idx].to(device, non_blocking=True) if soft_all is not None else None
        if parts.augment is not None:  # drawn for the global batch: every rank stays in step
            x = parts.augment(x, parts.generator)
        y2, lam = y, 1.0  # the partner's label and the face's own share of the target
        if parts.mix is not None:
            x, partner, lam = parts.mix(x, parts.generator)
            y2 = y[partner.to(y.device)]
            soft = blend(soft, partner, lam) if soft is not None else None
        if d.active:
            x, y, y2 = x[d.rank :: d.world], y[d.rank :: d.world], y2[d.rank :: d.world]
            soft = soft[d.rank :: d.world] if soft is not None else None
        x = scale(x, parts.spec)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = net(x)
            loss = parts.loss_fn(logits.float(), y)
            if lam < 1:
                loss = lam * loss + (1 - lam) * parts.loss_fn(logits.float(), y2)
            if soft is not None:
                a = cfg.distill_alpha
                loss = (1 - a) * loss + a * distill_loss(logits, soft, cfg.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if parts.ema is not None:
            parts.ema.update()
        if scheduler is not None and cfg.scheduler in ("cosine", "onecycle"):
            scheduler.step()
        # accumulate on device: .item() per batch would be a sync point on GPU
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == (y if lam >= 0.5 else y2)).sum()  # the larger share
        seen += len(y)
        if step % 20 == 0:
            bar.set_postfix(img_s=f"{seen / max(bar.format_dict['elapsed'], 1e-9):.0f}")
    bar.close()
    seen_t = torch.tensor(float(seen), dtype=torch.float64, device=device)
    totals = distributed.all_sum(torch.stack([total_loss.double(), correct.double(), seen_t]), d)
    loss_sum, correct_sum, seen_sum = totals.tolist()
    return {"train_loss": loss_sum / seen_sum, "train_acc": correct_sum / seen_sum}


def _run_dir(cfg: TrainConfig) -> Path:
    name = cfg.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.out) / name


def train(
    cfg: TrainConfig,
    resume: str | Path | None = None,
    runtime: dict[str, Any] | None = None,
    nproc: int = 1,
) -> Path:
    """Train a model as ``cfg`` says and return its run directory.

    ``resume``: a run directory to continue from its last.pt; its saved config is used, with
    ``runtime`` (threads, device) changed if given. ``nproc`` > 1: data-parallel training in
    that many local processes with the same global batch (see ``ferlab.distributed``).
    """
    cfg = TrainConfig.from_dict(cfg.to_dict())  # one built in Python is checked as a file's
    if nproc < 1:
        raise ValueError(f"nproc: expected 1 or more processes, got {nproc}")
    if nproc > 1:
        # what can be refused is refused here, as one line, not as a traceback per process
        checked, *_ = _prepare(cfg, resume, runtime)
        resolve_device(checked.device)
        check_batch_size(checked.batch_size, nproc)
        model_kwargs(checked)  # pretrained/frozen_blocks on a model that has none
        create_model(checked.model, **checked.model_kwargs)  # unknown names and kwargs
        if resume is None and not cfg.name:  # every process must pick the same directory
            cfg = replace(cfg, name=_run_dir(cfg).name)
        distributed.launch(train, nproc, cfg, resume, runtime)
        return Path(resume) if resume is not None else _run_dir(cfg)
    cfg, run_dir, ckpt, init = _prepare(cfg, resume, runtime)
    device = resolve_device(cfg.device)
    d = distributed.init(device)  # on a GPU it also makes cuda:LOCAL_RANK current
    finished = False
    try:
        if d.active:
            if device.type == "cuda":
                device = torch.device("cuda", d.local_rank)
            run_dir = distributed.broadcast(run_dir, d)  # a timestamped name is rank 0's
        if cfg.threads > 0 or d.active:
            torch.set_num_threads(cfg.threads or distributed.threads_per_worker(d.local_world))
        _fit(cfg, run_dir, ckpt, init, device, d)
        finished = True
    finally:
        distributed.close(d, finished)
    return run_dir


def _fit(
    cfg: TrainConfig,
    run_dir: Path,
    ckpt: dict[str, Any] | None,
    init: tuple[dict[str, torch.Tensor], dict] | None,
    device: torch.device,
    d: distributed.Dist,
) -> None:
    torch.manual_seed(cfg.seed)
    paths = ckpt.get("paths", {}) if ckpt is not None else input_paths(cfg)
    found = _locate(cfg, paths)  # cfg keeps the paths as given: they go on into checkpoints
    data = load_splits(found)
    if cfg.teacher:
        resuming = ckpt is not None
        data["train_soft"] = _teacher_targets(found.teacher, data["train_x"], run_dir, resuming, d)
    parts = build_parts(found, data, device, d, init)
    if d.active:  # same initial weights above; from here each rank draws its own dropout
        torch.manual_seed(distributed.rank_seed(cfg.seed, d))
    if device.type == "cuda":  # the whole set fits on the device: no loader, no copies
        data = {k: v.to(device) for k, v in data.items()}
    state: dict[str, Any] = {
        "epoch": -1,
        "best": -math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "stopped": False,
    }
    rows: list[dict[str, Any]] = []
    if ckpt is not None:
        state = restore(ckpt, parts, d.rank)
        # rows written after the checkpoint (killed in between) are dropped and redone
        rows = [r for r in read_history(run_dir) if int(r["epoch"]) <= state["epoch"] + 1]
        log.info("resuming %s at epoch %d", run_dir, state["epoch"] + 2)
        if d.main and state["best_epoch"] == state["epoch"]:
            # killed between writing last.pt and copying it to best.pt: finish the copy
            copy_atomic(run_dir / "last.pt", run_dir / "best.pt")
    elif d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", cfg.to_yaml().encode())

    # a resumed run's clock continues from its last row; the time it was down is not counted
    start = time.perf_counter() - float((rows[-1].get("elapsed") or 0) if rows else 0)
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if state["stopped"]:
            break
        t0 = time.perf_counter()
        stats = train_one_epoch(parts, data, cfg, device, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        seconds = time.perf_counter() - t0
        val = _validate(parts, data, cfg, device)
        val_loss = val.loss if val.loss is not None else math.nan
        lr = parts.optimizer.param_groups[0]["lr"]
        if isinstance(parts.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            parts.scheduler.step(val_loss)
        rows.append(
            {
                "epoch": epoch + 1,
                "lr": f"{lr:.3g}",
                "train_loss": f"{stats['train_loss']:.5f}",
                "train_acc": f"{stats['train_acc']:.5f}",
                "val_loss": f"{val_loss:.5f}",
                "val_acc": f"{val.accuracy:.5f}",
                "seconds": f"{seconds:.1f}",
                "images_per_s": f"{len(data['train_y']) / seconds:.1f}",
                "elapsed": f"{time.perf_counter() - start:.0f}",
            }
        )
        # a diverged epoch's NaN logits still score an accuracy (argmax picks class 0)
        monitored = val_loss if cfg.monitor == "val_loss" else -val.accuracy
        improved = _advance(
            state,
            monitored if math.isfinite(val_loss) else math.nan,
            epoch,
            cfg.early_stopping,
        )
        ranks_rng = distributed.all_objects(rng_state(), d)  # a collective: every rank
        if d.main:
            write_history(run_dir, rows)
            ckpt_now = make_checkpoint(cfg, parts, state, val.accuracy, val_loss, ranks_rng, paths)
            save_checkpoint(ckpt_now, run_dir / "last.pt")
            if improved:
                copy_atomic(run_dir / "last.pt", run_dir / "best.pt")
        log.info(
            "epoch %d/%d  lr %.3g  train loss %.4f acc %.4f  val loss %.4f acc %.4f  "
            "%.0fs (%.0f img/s)%s",
            epoch + 1,
            cfg.epochs,
            lr,
            stats["train_loss"],
            stats["train_acc"],
            val_loss,
            val.accuracy,
            seconds,
            len(data["train_y"]) / seconds,
            "  *" if improved else "",
        )
        if state["stopped"]:
            log.info(
                "early stopping: no %s improvement for %d epochs", cfg.monitor, cfg.early_stopping
            )
    if d.main:
        _save_curves(run_dir, rows)
        if state["best_epoch"] < 0:
            log.warning(
                "%s: no epoch had a finite %s, so no best.pt (diverged?)", run_dir, cfg.monitor
            )


def _teacher_targets(
    teacher: str, images: torch.Tensor, run_dir: Path, resuming: bool, d: distributed.Dist
) -> torch.Tensor:
    """The teacher's targets, scored once per run and kept in the run directory: a resumed run
    learns the same targets (the teacher may have changed since) without minutes of scoring.
    A new run scores afresh: a file left by a run that died before its first checkpoint may
    hold another teacher's targets, or another seed's faces."""
    path = run_dir / "teacher_probs.pt"
    if resuming and path.is_file():
        probs = load_tensors(path, "a teacher's targets")["probs"]
        if probs.shape == (len(images), len(EMOTIONS)):
            log.info("teacher targets from %s", path)
            return probs
    probs = teacher_probs(teacher, images, d)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint({"teacher": teacher, "probs": probs}, path)
    return probs


def _validate(parts: Parts, data: dict[str, torch.Tensor], cfg: TrainConfig, device):
    """Validation metrics; distributed ranks each score a slice and share the logits."""
    d, model = parts.dist, eval_model(parts)
    distributed.sync_buffers(model, d)  # evaluate (and save) rank 0's BN statistics
    logits = predict_logits(
        model,
        data["val_x"][d.rank :: d.world],
        parts.spec,
        device,
        cfg.eval_batch_size,
        channels_last=cfg.channels_last,
    )
    logits = distributed.gather_rows(logits.to(device), len(data["val_y"]), d)
    return evaluate_logits(logits.cpu(), data["val_y"].cpu())


# values of ``pretrained`` that are not files: none (He init) and torchvision's ImageNet weights
PRETRAINED_NAMES = ("", "imagenet")


def _prepare(
    cfg: TrainConfig, resume: str | Path | None, runtime: dict[str, Any] | None
) -> tuple[TrainConfig, Path, dict[str, Any] | None, tuple[dict[str, torch.Tensor], dict] | None]:
    """The config, run directory, checkpoint (None for a new run) and init weights (None
    without ``init``, or for a resumed run, whose weights come from its checkpoint: its init
    may have changed or gone since)."""
    if resume is None:
        run_dir = _run_dir(cfg)
        # either checkpoint counts: a run whose last.pt was deleted to save space still has
        # its best.pt (and history), which a new run would overwrite
        if any((run_dir / f).exists() for f in ("last.pt", "best.pt")):
            raise FileExistsError(f"{run_dir} already holds a run; resume it or pick a new name")
        # missing files fail now, not once the data has loaded (a teacher's name is looked
        # up as load_model does)
        if cfg.teacher and not model_file(cfg.teacher).exists():
            raise ValueError(f"config teacher: {cfg.teacher}: no such model or file")
        if cfg.pretrained not in PRETRAINED_NAMES and not Path(cfg.pretrained).exists():
            raise ValueError(f"config pretrained: {cfg.pretrained}: no such file")
        # loaded now, so that a mismatch fails before the data loads
        init = init_weights(cfg) if cfg.init else None
        return cfg, run_dir, None, init
    run_dir = Path(resume)
    ckpt = load_checkpoint(run_dir / "last.pt")
    bad = sorted(set(runtime or {}) - set(RUNTIME_KEYS))
    if bad:
        raise ValueError(
            f"a resumed run keeps its recipe; only {RUNTIME_KEYS} may change, not {bad}"
        )
    return TrainConfig.from_dict({**ckpt["config"], **(runtime or {})}), run_dir, ckpt, None


def input_paths(cfg: TrainConfig) -> dict[str, str]:
    """The absolute forms of a run's input files (data, and a teacher, pretrained or init
    weights given as a file), saved in its checkpoints beside the config's paths as given.

    The config keeps ``../shared/data/...`` as typed, which still works when the repository
    moves to another machine; the absolute form lets a run started in one folder be resumed,
    or recognised by ``evaluate``, from another."""
    given = {
        "data": cfg.data,
        "teacher": cfg.teacher,
        "pretrained": cfg.pretrained,
        "init": cfg.init,
    }
    # names (a shipped teacher, pretrained: imagenet) are not paths, even if a file is so named
    names = set(shipped_models()) | set(PRETRAINED_NAMES)
    return {
        k: str(Path(v).resolve()) for k, v in given.items() if v not in names and Path(v).exists()
    }


def _locate(cfg: TrainConfig, paths: dict[str, str]) -> TrainConfig:
    """``cfg`` with each input path that is not found from here replaced by its absolute form
    from :func:`input_paths`, where that exists."""
    moved: dict[str, Any] = {
        k: p for k, p in paths.items() if not Path(getattr(cfg, k)).exists() and Path(p).exists()
    }
    for key, path in moved.items():
        log.info("config %s: %s is not found from here; using %s", key, getattr(cfg, key), path)
    return replace(cfg, **moved)


def _advance(state: dict[str, Any], loss: float, epoch: int, patience: int) -> bool:
    """Record an epoch's monitored value (lower is better); True if it is a new best."""
    score = -loss
    # relative threshold as ReduceLROnPlateau's default: noise-level gains do not count;
    # a NaN is never best (every later epoch would compare False against it)
    improved = math.isfinite(score) and (
        state["best_epoch"] < 0 or score > state["best"] + 1e-4 * abs(state["best"])
    )
    if improved:
        state.update(best=score, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    state["stopped"] = bool(patience and state["bad_epochs"] >= patience)
    return improved


def _save_curves(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    if rows:
        from .plots import curves_figure, save_figure

        save_figure(curves_figure(rows), run_dir / "curves.png")
