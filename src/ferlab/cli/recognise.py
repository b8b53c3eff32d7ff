"""Commands that recognise expressions: predict, demo, serve."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.box import SIMPLE
from rich.table import Table

from ..data import EMOTIONS, atomic_write_bytes
from .app import TTA_HELP, app, check_out, check_tta_flag, console, err, parse_formats, print_error


@app.command()
def predict(
    sources: Annotated[list[str], typer.Argument(help="Images, folders, videos")],
    model: Annotated[
        str | None, typer.Option(help="Checkpoint, .onnx, or name \\[default: shipped]")
    ] = None,
    runtime: Annotated[
        str, typer.Option(help="torch or onnx (exports the model on the fly)")
    ] = "torch",
    detector: Annotated[
        str | None, typer.Option(help="Face detector (haar, ...) or none \\[default: haar]")
    ] = None,
    no_detect: Annotated[
        bool, typer.Option("--no-detect", help="Inputs are face crops (centre square)")
    ] = False,
    format: Annotated[
        str | None,
        typer.Option(help="json, csv or md; with --out a list \\[default: json, or json,csv,md]"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write predictions, annotated images/videos here")
    ] = None,
    every: Annotated[int, typer.Option(help="Keep every k-th video frame")] = 1,
    smooth: Annotated[float, typer.Option(help="Video smoothing of probabilities, 0..1")] = 0.0,
    tta: Annotated[str | None, typer.Option(help=TTA_HELP, callback=check_tta_flag)] = None,
    batch_size: Annotated[int, typer.Option(help="Faces per model call")] = 64,
) -> None:
    """Faces and emotion probabilities in photos, folders and videos."""
    from ..media import count_frames
    from ..outputs import render, write_predictions
    from ..predict import Predictor

    formats = parse_formats(format or ("json,csv,md" if out else "json"), out)
    if no_detect and detector not in (None, "none"):  # one of them would be ignored
        raise ValueError(f"--no-detect and --detector {detector}: choose one")
    detector = "none" if no_detect else detector or "haar"
    predictor = Predictor(_load(model, runtime), detector, batch_size, tta)
    # folders are read without the files under --out: the annotated images and videos of
    # an earlier run into photos/res must not become inputs of `predict photos/ --out photos/res`
    frames = predictor(sources, every=every, smooth=smooth, skip=out)
    stream = _progress(frames, count_frames(sources, every, skip=out))
    if out is not None:
        records, files = write_predictions(stream, out, formats)
        err.print(f"wrote {len(files)} files under {out}")
    else:
        records = [p.to_dict() for p in stream]
        print(render(records, formats[0]), end="")
    failed = [r for r in records if r.get("error")]
    for r in failed:
        print_error(r["error"])
    if failed:
        raise typer.Exit(1)


def _load(model: str | None, runtime: str):
    from ..classifier import load_model

    return load_model(model, runtime=runtime)


def _progress(stream, total: int | None):
    from tqdm import tqdm

    # progress on stderr: stdout stays clean for JSON/CSV
    return tqdm(
        stream,
        total=total,
        unit="img",
        file=sys.stderr,
        leave=False,
        disable=total is not None and total <= 1,
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the annotated photo and predictions go")] = Path(
        "runs/demo"
    ),
    model: Annotated[str | None, typer.Option(help="Model \\[default: shipped]")] = None,
    detector: Annotated[str, typer.Option(help="Face detector")] = "haar",
) -> None:
    """Recognise the expression in a demo photo (scikit-image's astronaut, NASA, public domain)."""
    from PIL import Image

    from ..media import demo_image
    from ..outputs import write_predictions
    from ..predict import Predictor

    check_out(out)
    predictor = Predictor(_load(model, "torch"), detector)  # a bad name writes nothing
    photo = out / "astronaut.png"
    buf = io.BytesIO()
    Image.fromarray(demo_image()).save(buf, format="PNG")
    atomic_write_bytes(photo, buf.getvalue())
    records, files = write_predictions(predictor(photo), out, ["json"])
    table = Table(title="astronaut (skimage.data.astronaut)", box=SIMPLE)
    for col in ("box x,y,w,h", "label", *(e[:3] for e in EMOTIONS)):
        table.add_column(col, justify="right", no_wrap=True)
    for face in records[0]["faces"]:
        probs = face["emotions"]
        label = max(probs, key=probs.get)
        box = ",".join(map(str, face["box"]))
        table.add_row(box, label, *(f"{probs[e]:.2f}" for e in EMOTIONS))
    console.print(table)
    console.print(f"wrote {', '.join(str(f) for f in files)}")


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option(help="Checkpoint, export, .onnx or name \\[default: shipped]")
    ] = None,
    runtime: Annotated[str, typer.Option(help="torch or onnx (exports on the fly)")] = "torch",
    detector: Annotated[str, typer.Option(help="Default face detector")] = "haar",
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 exposes it to the network")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes, each with its model")] = 1,
    root_path: Annotated[
        str, typer.Option(help="Path prefix a reverse proxy serves this under (/fer)")
    ] = "",
    batch_wait_ms: Annotated[
        float, typer.Option(help="Wait for concurrent faces to batch; 0 = off")
    ] = 5.0,
    max_batch: Annotated[int, typer.Option(help="Faces per model call, at most")] = 64,
    max_upload_mb: Annotated[float, typer.Option(help="Largest image accepted (MB)")] = 10.0,
    max_pending_mb: Annotated[
        float | None,
        typer.Option(help="Uploads held at once, all requests (503 above) \\[default: 2 batches]"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before a request gets 504")] = 30.0,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="FERLAB_API_KEY", help="Require this key on /v1/ (X-API-Key)"),
    ] = None,
) -> None:
    """HTTP service and web page: POST /v1/predict, GET / (photo and webcam), /docs, /metrics."""
    from ..serve import serve as run_server
    from ..serve.service import SettingError

    try:
        run_server(
            host=host,
            port=port,
            workers=workers,
            root_path=root_path,
            model=model,
            runtime=runtime,
            detector=detector,
            batch_wait_ms=batch_wait_ms,
            max_batch=max_batch,
            max_upload_mb=max_upload_mb,
            max_pending_mb=max_pending_mb,
            timeout_s=timeout,
            api_key=api_key,
        )
    except SettingError as e:  # say the option the user typed, not the Python parameter
        option = "--timeout" if e.setting == "timeout_s" else "--" + e.setting.replace("_", "-")
        raise ValueError(e.named(option)) from None
