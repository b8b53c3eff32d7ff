"""The ``ferlab`` command line: thin commands over the library."""

from . import lab, recognise  # noqa: F401  (importing them registers their commands)
from .app import app, main

__all__ = ["app", "main"]
