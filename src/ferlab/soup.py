"""Weight averaging ("model soups", Wortsman et al. 2022): one network whose weights are the
mean of several fine-tunes of the same starting point, so it costs one model's inference.

Averaging only works for networks that stay in one basin of the loss, such as fine-tunes of
one checkpoint; independently trained seeds do not (their units are permuted), which the
held-out accuracy that :func:`greedy_soup` and ``ferlab average`` print makes plain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import update_bn

from .classifier import Classifier
from .evaluate import input_views


def _same(models: Sequence[Classifier], names: Sequence[str]) -> None:
    """Refuse, in one line naming both, ingredients whose weights cannot be averaged."""
    first = models[0]
    for model, name in zip(models[1:], names[1:], strict=True):
        for field, get in (
            ("model_name", lambda m: m.name),
            ("classes", lambda m: list(m.classes)),
            ("preprocess", lambda m: dict(m.preprocess)),
            ("weights", lambda m: {k: tuple(v.shape) for k, v in m.model.state_dict().items()}),
        ):
            if get(model) != get(first):
                raise ValueError(
                    f"{name}: {field} differs from {names[0]}'s; a soup averages one network"
                )


def average(models: Sequence[Classifier], names: Sequence[str] | None = None) -> Classifier:
    """The uniform average of ``models``' weights (batch-norm statistics included; integer
    buffers such as ``num_batches_tracked`` come from the first), as a new Classifier that
    keeps the first model's metadata but not its own test-time augmentation (a new network's
    views are chosen anew: ``ferlab export --tta``)."""
    if not models:
        raise ValueError("average needs at least one model")
    names = list(names or [f"model {i}" for i in range(len(models))])
    _same(models, names)
    states = [m.model.state_dict() for m in models]
    mean = {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in states[0].items()
    }
    first = models[0]
    net = copy.deepcopy(first.model)
    net.load_state_dict(mean)
    return Classifier(
        net,
        first.preprocess,
        first.classes,
        first.name,
        copy.deepcopy(first.meta),
        str(first.device),
    )


def _batches(model: Classifier, faces: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(faces))
    for (x,) in input_views(images, model.preprocess, model.device, batch_size, channels_last=True):
        yield x


def recalibrate_bn(model: Classifier, faces: np.ndarray, batch_size: int = 256) -> Classifier:
    """Re-estimate ``model``'s batch-norm statistics on uint8 ``faces`` (N, 48, 48), in place:
    averaged weights no longer produce the averaged activations' statistics. A network
    without batch norm is left as it is."""
    with torch.no_grad():
        update_bn(_batches(model, faces, batch_size), model.model)
    model.model.eval()  # update_bn leaves it in training mode
    return model


def greedy_soup(
    models: Sequence[Classifier],
    score: Callable[[Classifier], float],
    prepare: Callable[[Classifier], Classifier] = lambda m: m,
) -> tuple[list[int], list[float], Classifier, float]:
    """Wortsman et al.'s greedy soup: ingredients in order of their own held-out ``score``
    (higher is better), each kept only if the soup with it scores no lower than without.
    ``prepare`` turns an average into the model to score (batch-norm re-estimation, say),
    single ingredients included, so that averaging is judged against them on equal terms.
    Returns the kept indices, every ingredient's score, the soup and its score."""
    singles = [prepare(average([m])) for m in models]
    scores = [float(score(m)) for m in singles]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    kept, best, soup = [order[0]], scores[order[0]], singles[order[0]]
    for i in order[1:]:
        trial = prepare(average([models[j] for j in [*kept, i]]))
        trial_score = float(score(trial))
        if trial_score >= best:
            kept, best, soup = [*kept, i], trial_score, trial
    return kept, scores, soup, best


def make_soup(
    models: Sequence[Classifier],
    names: Sequence[str],
    data: str,
    split: str = "PublicTest",
    bn: bool = True,
    greedy: bool = False,
) -> tuple[Classifier, dict[str, Any]]:
    """The uniform (or, with ``greedy``, greedy) soup of ``models``, its batch-norm statistics
    re-estimated on the training faces (``bn=False``: averaged as they are; test faces would
    leak into the model), and a report: each ingredient's and the soup's accuracy on the
    held-out ``split`` and which were kept. Ingredients are scored with their statistics
    re-estimated too; a soup of one model is that model re-estimated. Re-estimation alone
    can pay: a network trained on augmented batches carries their statistics, not those of
    the clean faces it will see (six ``vggnet_s``: +0.3 to +1.3 points on PublicTest)."""
    from .evaluate import evaluate_probs, held_out, load_split

    _same(models, names)  # before minutes of scoring
    part, how = held_out(list(models), data, split, "score soups")
    bn_faces = load_split(data, "train", *how).images if bn else None

    def prepare(soup: Classifier) -> Classifier:
        return soup if bn_faces is None else recalibrate_bn(soup, bn_faces)

    def accuracy(model: Classifier) -> float:  # one pass: a soup's own views are chosen later
        return evaluate_probs(model.predict_proba(part.images, tta="none"), part.labels).accuracy

    if greedy:
        kept, scores, soup, best = greedy_soup(models, accuracy, prepare)
    else:
        kept = list(range(len(models)))
        singles = [prepare(average([m])) for m in models]
        scores = [accuracy(m) for m in singles]
        # one input: its re-estimated single is the soup, scored already
        soup = singles[0] if len(models) == 1 else prepare(average(models, names))
        best = scores[0] if len(models) == 1 else accuracy(soup)
    report = {
        "ingredients": [
            {"model": str(n), "accuracy": round(s, 4), "kept": i in kept}
            for i, (n, s) in enumerate(zip(names, scores, strict=True))
        ],
        "greedy": greedy,
        "bn_recalibrated": bn,
        "split": split,
        "accuracy": round(best, 4),
    }
    # the first ingredient's metrics would describe another network
    soup.meta["metrics"] = {split: {"accuracy": report["accuracy"]}}
    return soup, report
