"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

Every model takes ``(N, 1, 48, 48)`` float input and returns ``(N, 7)`` logits.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator adding a model builder under its function name."""
    name = fn.__name__
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, num_classes: int = 7, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("vgg19", frozen_blocks=2)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    try:
        return MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as e:  # a misspelt or misplaced keyword (model_kwargs: {hiden: 256})
        if "argument" not in str(e):
            raise
        raise ValueError(f"model {name!r}: {e}") from None


from . import small, vgg  # noqa: E402,F401  (register the builders)

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
