"""The ``ferlab`` Typer app, its consoles and the entry point that turns errors into exit 2."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.text import Text

from ..data import DataError
from ..transforms import TTA_MODES

# help strings write "\\[default: x]": Rich would take a bare "[default: x]" for markup
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Facial expression recognition: train, evaluate, experiment, predict, serve.",
)
TTA_HELP = "none, flip or shift (10 views); default: the model's own (shipped default: shift)"


def check_tta_flag(value: str | None) -> str | None:
    """``--tta``, checked as it is parsed: before any model loads, and named in the error."""
    if value is not None and value not in TTA_MODES:
        raise ValueError(f"--tta {value}: expected one of {', '.join(TTA_MODES)}")
    return value


def check_weights_flag(value: str) -> str:
    if value not in ("equal", "fit"):
        raise ValueError(f"--weights {value}: expected equal or fit")
    return value


# soft_wrap: a message or a path is one line however long (scripts grep them; a wrapped
# "wrote <path>" cannot be pasted); tables still lay themselves out to the width. No markup:
# messages carry paths and pip extras ('ferlab[dlib]') whose brackets must print as they are
console = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def print_error(message: str) -> None:
    err.print(Text("error: ", style="red") + Text(message), highlight=False)


def check_out(out: str | Path | None, folder: bool = True, flag: str = "--out") -> None:
    """Refuse, before any work, an ``--out`` below a file (a folder, or with ``folder`` the
    path itself, would have to be made there): it failed after the work, with errno text."""
    if out is None:
        return
    path = Path(out)
    for p in [path, *path.parents] if folder else path.parents:
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{flag} {out}: {p} is a file, not a folder")
            return


def parse_formats(text: str, out: str | Path | None) -> list[str]:
    """``--format a,b`` and ``--out``, checked before any work: known names, one only for
    stdout, an output folder that can be made."""
    from ..outputs import check_formats

    check_out(out)
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
        print_error(str(e))
        sys.exit(2)
