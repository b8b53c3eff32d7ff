"""Commands that train, measure and package models: data, train, evaluate, ensemble, average,
export, experiment, report, models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..config import DEFAULT_DATA, TrainConfig, parse_override
from ..data import EMOTIONS, USAGES
from .app import (
    TTA_HELP,
    app,
    check_out,
    check_tta_flag,
    check_weights_flag,
    console,
    err,
    parse_formats,
    print_error,
)

data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
app.add_typer(data_app, name="data")


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="FER-2013 CSV(.gz), per-image release or folder")],
    plot: Annotated[
        Path | None, typer.Option(help="Write class-distribution and sample plots here")
    ] = None,
    ignore_unknown: Annotated[bool, typer.Option(help="Skip unknown class folders")] = False,
) -> None:
    """Counts per split and class."""
    from ..data import load_dataset

    check_out(plot, flag="--plot")
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
    console.print(table, width=None if console.is_terminal else 120)  # no "disgu…" in a pipe
    if plot is not None:
        from ..plots import class_distribution_figure, samples_figure, save_figure

        a = save_figure(class_distribution_figure(counts), plot / "class_distribution.png")
        b = save_figure(samples_figure(data.images, data.labels), plot / "samples.png")
        console.print(f"wrote {a} and {b}")


def _settings(overrides: list[str], **flags) -> dict:
    """``--set key=value`` pairs and the flags given, a key given both ways refused."""
    values = dict(parse_override(s) for s in overrides)
    given = {k: v for k, v in flags.items() if v is not None}
    both = sorted(k for k in given if k in values)
    if both:  # one of the two would be dropped without a word
        flag = both[0].replace("_", "-")
        raise ValueError(f"--{flag} and --set {both[0]}=...: give {both[0]} once")
    return {**values, **given}


def _config(config: Path | None, overrides: list[str], **flags) -> TrainConfig:
    return TrainConfig.from_yaml(config, **_settings(overrides, **flags))


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (configs/*.yaml)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override: key=value (repeatable)")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory")] = None,
    data: Annotated[
        str | None, typer.Option(help=f"Dataset path \\[default: {DEFAULT_DATA}]")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (ferlab models)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (runs/<name>)")] = None,
    out: Annotated[str | None, typer.Option(help="Parent folder of runs")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel processes (DDP: gloo on CPU, NCCL on GPUs)")
    ] = 1,
) -> None:
    """Train a model; writes runs/<name>/{config.yaml,metrics.csv,last.pt,best.pt,curves.png}.

    Several machines: torchrun --nnodes ... --nproc-per-node N -m ferlab train CONFIG
    """
    from ..train import train as run_training

    if resume is not None:
        recipe = {
            "config": config,
            "data": data,
            "model": model,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "name": name,
            "out": out,
            "seed": seed,
        }
        given = sorted(k for k, v in recipe.items() if v is not None)
        if given:
            raise ValueError(f"--resume continues a run with its own recipe; drop {given}")
        runtime = _settings(set_ or [], device=device)
        run_dir = run_training(TrainConfig(), resume=resume, runtime=runtime, nproc=nproc)
    else:
        check_out(out)
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
        run_dir = run_training(cfg, nproc=nproc)
    console.print(f"run saved to {run_dir}")


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Argument(help="Checkpoint, run dir, export, ensemble or shipped name")
    ],
    data: Annotated[str, typer.Option(help="Dataset path")] = DEFAULT_DATA,
    split: Annotated[
        str,
        typer.Option(
            help="Training, PublicTest, PrivateTest; or train/val/test; or all (every face: "
            "data the model was not trained on)"
        ),
    ] = "PublicTest",
    split_mode: Annotated[
        str | None,
        typer.Option(help="official or stratified \\[default: as trained, on its data]"),
    ] = None,
    tta: Annotated[str | None, typer.Option(help=TTA_HELP, callback=check_tta_flag)] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write metrics.{json,csv,md} and confusion.png here")
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            help="json, csv or md, comma-separated with --out \\[default: md; all 3 with --out]"
        ),
    ] = None,
    ignore_unknown: Annotated[
        bool | None,
        typer.Option(
            "--ignore-unknown/--no-ignore-unknown",
            help="Skip class folders that are not one of the 7 emotions \\[default: as trained]",
        ),
    ] = None,
) -> None:
    """Accuracy, macro-F1, per-class P/R/F1 and the confusion matrix on one split."""
    from ..classifier import load_model
    from ..evaluate import evaluate_split

    formats = parse_formats(format or ("json,csv,md" if out else "md"), out)
    clf = load_model(model)
    metrics = evaluate_split(clf, data, split, split_mode, tta, ignore_unknown)
    views = tta if tta is not None else getattr(clf, "tta", "none")  # the model's own
    title = f"{model} on {split}" + (f" ({views} TTA)" if views != "none" else "")
    if out is not None:
        for path in metrics.save(out, formats, title=title):
            err.print(f"wrote {path}")
    print(metrics.render(formats[0], title))


@app.command()
def ensemble(
    members: Annotated[list[str], typer.Argument(help="Checkpoints, run dirs or exports")],
    out: Annotated[Path, typer.Option(help="Manifest stem: writes OUT.json and OUT/")],
    data: Annotated[str, typer.Option(help="Dataset path")] = DEFAULT_DATA,
    split: Annotated[str, typer.Option(help="Held-out split to calibrate on")] = "PublicTest",
    tta: Annotated[
        str, typer.Option(help="none, flip or shift, for every member", callback=check_tta_flag)
    ] = "none",
    weights: Annotated[
        str,
        typer.Option(
            help="equal, or fit: fitted on the split, and scored cross-fitted",
            callback=check_weights_flag,
        ),
    ] = "equal",
) -> None:
    """Average members' calibrated probabilities: temperatures (and weights) fitted on a
    held-out split."""
    from ..classifier import load_model
    from ..ensemble import build_ensemble, save_ensemble
    from ..export import check_exportable

    # members are saved as safetensors: refuse an ONNX file before minutes of calibration
    check_out(out)  # OUT/ holds the members
    models = [check_exportable(load_model(m), m) for m in members]
    ens, accuracy = build_ensemble(models, data, split, tta, weighted=weights == "fit")
    fitted = zip(members, ens.temperatures, ens.weights, accuracy["members"], strict=True)
    for m, t, w, acc in fitted:
        console.print(f"{m}: {split} accuracy {acc:.2%}, temperature {t:.3f}, weight {w:.3f}")
    console.print(
        f"ensemble of {len(members)}: {split} accuracy {accuracy['ensemble']:.2%} "
        f"({accuracy['crossfit']:.2%} with each half fitted on the other)"
    )
    scores = {"accuracy": accuracy["ensemble"], "crossfit_accuracy": accuracy["crossfit"]}
    extra = {"calibrated_on": split, "weighting": weights, "metrics": {split: scores}}
    console.print(f"wrote {save_ensemble(ens, out, extra=extra)}")


@app.command()
def average(
    models: Annotated[
        list[str], typer.Argument(help="Checkpoints, run dirs or exports of one network")
    ],
    out: Annotated[Path, typer.Option(help="Export stem: writes OUT.safetensors and OUT.json")],
    data: Annotated[str, typer.Option(help="Dataset path")] = DEFAULT_DATA,
    split: Annotated[str, typer.Option(help="Held-out split that scores (and picks) soups")] = (
        "PublicTest"
    ),
    bn: Annotated[
        bool, typer.Option(help="Re-estimate batch-norm statistics on the training faces")
    ] = True,
    greedy: Annotated[
        bool, typer.Option(help="Keep an ingredient only if the soup scores no lower with it")
    ] = False,
) -> None:
    """Average the weights of fine-tunes of one model (a model soup) into one network."""
    from ..classifier import load_model, weights_sha256
    from ..export import check_exportable, export_safetensors
    from ..soup import make_soup

    check_out(out, folder=False)
    loaded = [check_exportable(load_model(m), m) for m in models]
    digests = [weights_sha256(m) for m in models]  # the paths may be overwritten later
    soup, report = make_soup(loaded, models, data, split, bn, greedy)
    for row, digest in zip(report["ingredients"], digests, strict=True):
        row["sha256"] = digest
    # the config is the first input's; the soup is a model of its own, named as written
    soup.meta["config"] = {**soup.meta.get("config", {}), "name": out.name}
    for row in report["ingredients"]:
        kept = "" if row["kept"] else " (left out)"
        console.print(f"{row['model']}: {split} accuracy {row['accuracy']:.2%}{kept}")
    kept = sum(row["kept"] for row in report["ingredients"])
    console.print(f"soup of {kept}: {split} accuracy {report['accuracy']:.2%}")
    console.print(
        "wrote " + ", ".join(map(str, export_safetensors(soup, out, extra={"soup": report})))
    )


@app.command()
def export(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Checkpoint, run dir, export or shipped name; with --int8 also a float .onnx "
            "\\[default: the shipped default]"
        ),
    ] = None,
    format: Annotated[str, typer.Option(help="onnx or safetensors")] = "onnx",
    out: Annotated[
        Path | None, typer.Option(help="File (.onnx) or stem (safetensors) \\[default: model]")
    ] = None,
    info: Annotated[
        Path | None, typer.Option(help="YAML/JSON of extra facts (safetensors)")
    ] = None,
    int8: Annotated[
        bool, typer.Option(help="ONNX: static int8 quantisation, calibrated on training faces")
    ] = False,
    data: Annotated[
        str | None, typer.Option(help=f"Dataset for --int8 calibration \\[default: {DEFAULT_DATA}]")
    ] = None,
    tta: Annotated[
        str | None,
        typer.Option(
            help="The views the export averages unless told otherwise: none, flip or shift "
            "\\[default: the model's own]",
            callback=check_tta_flag,
        ),
    ] = None,
) -> None:
    """Export a model to ONNX (metadata included, parity checked) or fp16 safetensors."""
    from ..classifier import load_model
    from ..export import check_exportable, export_onnx, export_safetensors

    # Refuse options this format ignores before the model loads: a silently dropped --int8
    # would ship an fp32 file under a name that says otherwise.
    if format not in ("onnx", "safetensors"):
        raise ValueError(f"--format: unknown {format!r}; expected onnx or safetensors")
    if int8 and format != "onnx":
        raise ValueError("--int8 applies to --format onnx only")
    if info is not None and format != "safetensors":
        raise ValueError("--info applies to --format safetensors only")
    if data is not None and not int8:
        raise ValueError("--data is the --int8 calibration set; add --int8 or drop --data")
    check_out(out, folder=False)
    from ..onnx_model import OnnxClassifier

    clf = load_model(model)
    if not (int8 and isinstance(clf, OnnxClassifier)):  # --int8 takes a float .onnx as it is
        clf = check_exportable(clf, model or "default")
    elif tta is not None:
        raise ValueError(f"--tta: {model} keeps its own; export its PyTorch model with --tta")
    if tta is not None:
        clf.tta = tta
    if int8:
        from ..export import export_int8

        console.print(f"wrote {export_int8(clf, out or Path('model.onnx'), data or DEFAULT_DATA)}")
    elif format == "onnx":
        console.print(f"wrote {export_onnx(clf, out or Path('model.onnx'))}")
    else:
        from ..config import load_yaml_mapping

        extra = load_yaml_mapping(info) if info else None
        console.print(
            "wrote "
            + ", ".join(map(str, export_safetensors(clf, out or Path("model"), extra=extra)))
        )


@app.command()
def experiment(
    suite: Annotated[Path, typer.Argument(help="Suite YAML (configs/experiments/*.yaml)")],
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Budget: maximum epochs per trial")
    ] = None,
    subset: Annotated[
        float | None, typer.Option(help="Budget: stratified training fraction")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(min=1, help="Budget: seeds per variant (capped by its own)")
    ] = None,
    variants: Annotated[str | None, typer.Option(help="Only these variants (a,b,c)")] = None,
    backend: Annotated[str, typer.Option(help="local or ray")] = "local",
    workers: Annotated[
        int, typer.Option(min=1, help="Trials at once (CPU threads are divided)")
    ] = 1,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (ray backend)")] = None,
    out: Annotated[
        str | None, typer.Option(help="Parent folder \\[default: the suite's out]")
    ] = None,
) -> None:
    """Run a suite's unfinished trials (resumable), then write its report."""
    from ..experiments import Suite, run_suite
    from ..report import build_report

    check_out(out)
    s = Suite.from_yaml(suite)
    if out is not None:
        s.out = out
    chosen = [v.strip() for v in variants.split(",")] if variants else None
    trials = run_suite(s, backend, workers, address, repeats, chosen, epochs=epochs, subset=subset)
    files = build_report(
        Path(s.out) / s.name,
        s.baseline_name,
        s.name,
        notes=s.notes,
        order=list(s.variants),
        only=list(s.variants),
    )
    console.print(f"report: {files[0]}")
    failed = [t for t in trials if t.failed]
    for t in failed:
        error = json.loads((t.run_dir / "error.json").read_text())["error"]
        print_error(f"{t.variant}/seed{t.seed}: {error}")
    if failed:  # the report is written, but a script must see that trials are missing
        raise typer.Exit(1)


@app.command()
def report(
    runs: Annotated[Path, typer.Argument(help="Folder holding trial results (result.json)")],
    baseline: Annotated[str, typer.Option(help="Variant to compare against")] = "",
    title: Annotated[str, typer.Option(help="Report title")] = "",
    suite: Annotated[
        Path | None, typer.Option(help="Suite YAML: its name, baseline and notes")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write here \\[default: RUNS]")] = None,
) -> None:
    """Statistics, comparisons and plots over a set of runs: report.md/html, results.csv/json."""
    from ..report import build_report

    check_out(out)
    notes, order = "", None
    if suite is not None:
        from ..experiments import Suite

        s = Suite.from_yaml(suite)
        baseline, title, notes = baseline or s.baseline_name, title or s.name, s.notes
        order = list(s.variants)
    files = build_report(runs, baseline, title, notes, out, order, only=order)
    console.print(f"report: {files[0]}")


@app.command("models")
def models_cmd() -> None:
    """List the registered model architectures."""
    from ..models import list_models

    for m in list_models():
        print(m)
