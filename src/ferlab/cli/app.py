"""The ``ferlab`` Typer app, its consoles and the entry point that turns errors into exit 2."""

from __future__ import annotations

import logging
import sys

import typer
import yaml
from rich.console import Console

from ..data import DataError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Facial expression recognition: train, evaluate, experiment, predict, serve.",
)
TTA_HELP = "none, flip or shift (10 views); default: the model's own (an ensemble's manifest)"
# soft_wrap: a message or a path is one line however long (scripts grep them; a wrapped
# "wrote <path>" cannot be pasted); tables still lay themselves out to the width
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def parse_formats(text: str, out: object) -> list[str]:
    """``--format a,b``, checked before any work: known names, and one only for stdout."""
    from ..outputs import check_formats

    formats = [f.strip() for f in text.split(",")]
    check_formats(formats)
    if len(formats) > 1 and out is None:
        raise ValueError(f"--format {text}: several formats need --out (stdout takes one)")
    return formats


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        app()
    except (DataError, ValueError, OSError, ImportError, RuntimeError, yaml.YAMLError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
