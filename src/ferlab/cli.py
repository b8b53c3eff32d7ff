"""The ``ferlab`` command line: thin commands over the library."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import DEFAULT_DATA, TrainConfig, parse_override
from .data import EMOTIONS, USAGES, DataError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Facial expression recognition: train, evaluate, experiment, predict.",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="FER-2013 CSV(.gz), per-image release or folder")],
    plot: Annotated[
        Path | None, typer.Option(help="Write class-distribution and sample plots here")
    ] = None,
    ignore_unknown: Annotated[bool, typer.Option(help="Skip unknown class folders")] = False,
) -> None:
    """Counts per split and class."""
    from .data import load_dataset

    data = load_dataset(path, ignore_unknown)
    table = Table(title=f"{path} ({len(data)} faces)")
    table.add_column("split", no_wrap=True)
    for name in (*EMOTIONS, "total"):
        table.add_column(name, justify="right")
    groups = [u for u in USAGES if (data.usage == u).any()] or [""]
    if (data.usage == "").any() and groups != [""]:
        groups.append("")
    counts = {}
    for u in groups:
        c = data.subset(data.usage == u).counts()
        counts[u or "all"] = c
        table.add_row(u or "(no split)", *map(str, c), str(c.sum()))
    console.print(table)
    if plot is not None:
        from .plots import class_distribution_figure, samples_figure, save_figure

        a = save_figure(class_distribution_figure(counts), plot / "class_distribution.png")
        b = save_figure(samples_figure(data.images, data.labels), plot / "samples.png")
        console.print(f"wrote {a} and {b}")


def _config(config: Path | None, overrides: list[str], **flags) -> TrainConfig:
    values = dict(parse_override(s) for s in overrides)
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig.from_yaml(config, **values)


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (configs/*.yaml)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override: key=value (repeatable)")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory")] = None,
    data: Annotated[
        str | None, typer.Option(help=f"Dataset path [default: {DEFAULT_DATA}]")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (ferlab models)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (runs/<name>)")] = None,
    out: Annotated[str | None, typer.Option(help="Parent folder of runs")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda")] = None,
) -> None:
    """Train a model; writes runs/<name>/{config.yaml,metrics.csv,last.pt,best.pt,curves.png}."""
    from .train import train as run_training

    if resume is not None:
        run_dir = run_training(TrainConfig(), resume=resume)
    else:
        cfg = _config(
            config,
            set_ or [],
            data=data,
            model=model,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            name=name,
            out=out,
            seed=seed,
            device=device,
        )
        run_dir = run_training(cfg)
    console.print(f"run saved to {run_dir}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint .pt or run directory (best.pt)")],
    data: Annotated[str, typer.Option(help="Dataset path")] = DEFAULT_DATA,
    split: Annotated[
        str, typer.Option(help="Training, PublicTest, PrivateTest; or train/val/test")
    ] = "PublicTest",
    split_mode: Annotated[
        str, typer.Option(help="official or stratified (for train/val/test)")
    ] = "official",
    tta: Annotated[str, typer.Option(help="none or flip")] = "none",
    out: Annotated[
        Path | None, typer.Option(help="Write metrics.{json,csv,md} and confusion.png here")
    ] = None,
    format: Annotated[str, typer.Option(help="json, csv or md (comma-separated for --out)")] = "md",
) -> None:
    """Accuracy, macro-F1, per-class P/R/F1 and the confusion matrix on one split."""
    from .classifier import load_model
    from .evaluate import evaluate_split

    clf = load_model(checkpoint)
    metrics = evaluate_split(clf, data, split, split_mode=split_mode, tta=tta)
    title = f"{checkpoint} on {split}" + (" (flip TTA)" if tta == "flip" else "")
    formats = tuple(f.strip() for f in format.split(","))
    if out is not None:
        for path in metrics.save(out, formats, title=title):
            err.print(f"wrote {path}")
    text = {
        "json": lambda: json.dumps(metrics.to_dict(), indent=2),
        "csv": metrics.to_csv,
        "md": lambda: metrics.to_markdown(title),
    }
    if formats[0] not in text:
        raise ValueError(f"unknown format {formats[0]!r}; expected json, csv or md")
    print(text[formats[0]]())


@app.command("models")
def models_cmd() -> None:
    """List the registered model architectures."""
    from .models import list_models

    for m in list_models():
        print(m)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        app()
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
