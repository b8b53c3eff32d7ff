"""``torch.load`` for files from anywhere: tensors and plain containers only, never code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch


def load_tensors(path: str | Path, expected: str) -> Any:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True``; anything else, from junk bytes
    to a pickled object, is one line naming ``path`` and what was ``expected``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; one clear line for all
        raise ValueError(f"{path}: not {expected} ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    """The first line of what the weights-only unpickler refused (torch's message is a page
    that ends by suggesting ``weights_only=False``, which ferlab never does)."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
    text = found.group(1) if found else str(e)
    first = (text.strip().splitlines() or [""])[0].split(". ")[0]  # not torch's advice
    return f"{type(e).__name__}: {first[:160]}"
