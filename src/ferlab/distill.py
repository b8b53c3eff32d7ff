"""Knowledge distillation: a teacher's targets for the training faces, and the loss on them."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import distributed

log = logging.getLogger(__name__)


def teacher_probs(
    teacher: str, images: torch.Tensor, d: distributed.Dist | None = None
) -> torch.Tensor:
    """The teacher's probabilities for the (unaugmented) training faces, computed once.

    Offline distillation: the student sees augmented faces, the teacher's targets come from the
    originals. The augmentations keep the label, and this costs one pass instead of one
    teacher forward per batch, which on a CPU would cost more than the student's own step.
    The targets average the face and its mirror image: the student sees both under one target
    (flip augmentation), and flip averaging is also the more accurate teacher.
    Distributed ranks each score a slice and share the results.
    """
    from .classifier import load_model

    d = d or distributed.Dist()
    log.info("teacher %s: scoring %d training faces (flip-averaged)", teacher, len(images))
    mine = images[d.rank :: d.world].numpy()
    probs = torch.from_numpy(load_model(teacher).predict_proba(mine, tta="flip"))
    return distributed.gather_rows(probs, len(images), d)


def distill_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, T: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2 so its gradients keep their scale
    as T changes (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)."""
    target = F.softmax(torch.log(teacher_probs.float().clamp_min(1e-8)) / T, dim=1)
    return F.kl_div(F.log_softmax(logits.float() / T, dim=1), target, reduction="batchmean") * T * T
