"""Prediction outputs: JSON, CSV (a row per face), a Markdown summary, annotated media.

Writers take the plain dicts of ``Prediction.to_dict()`` so a long run never holds images.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import EMOTIONS, atomic_write_bytes

CSV_FIELDS = ["path", "frame", "time", "face", "x", "y", "w", "h", "label", "confidence", *EMOTIONS]


def to_json(records: Sequence[dict[str, Any]]) -> str:
    # a final newline, as CSV and Markdown end: stdout and the file are whole lines
    return json.dumps(list(records), indent=2) + "\n"


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in records:
        for i, face in enumerate(r["faces"]):
            probs = [face["emotions"][e] for e in EMOTIONS]
            best = int(np.argmax(probs))
            t = r.get("time")
            w.writerow(
                [
                    r["path"] or "",
                    r.get("frame", ""),
                    "" if t is None else f"{t:.3f}",
                    i,
                    *face["box"],
                    EMOTIONS[best],
                    f"{probs[best]:.4f}",
                    *(f"{p:.4f}" for p in probs),
                ]
            )
    return buf.getvalue()


def to_markdown(records: Sequence[dict[str, Any]]) -> str:
    """Counts of dominant emotions and mean probabilities over all faces."""
    faces = [f for r in records for f in r["faces"]]
    errors = [r for r in records if r.get("error")]
    probs = np.array([[f["emotions"][e] for e in EMOTIONS] for f in faces]).reshape(-1, 7)
    dominant = Counter(EMOTIONS[int(i)] for i in probs.argmax(1)) if len(faces) else Counter()
    lines = [
        "# Expression summary",
        "",
        f"- images or frames: {len(records) - len(errors)}",
        f"- faces: {len(faces)}",
        f"- without a face: {sum(1 for r in records if not r['faces'] and not r.get('error'))}",
        f"- unreadable: {len(errors)}",
        "",
        "| emotion | dominant in | share | mean probability |",
        "|---|---|---|---|",
    ]
    for i, e in enumerate(EMOTIONS):
        n = dominant.get(e, 0)
        share = n / len(faces) if faces else 0.0
        mean = float(probs[:, i].mean()) if len(faces) else 0.0
        lines.append(f"| {e} | {n} | {share:.1%} | {mean:.3f} |")
    for r in errors:
        lines.append(f"\n- error: {r['error']}")
    return "\n".join(lines) + "\n"


FORMATS = {"json": to_json, "csv": to_csv, "md": to_markdown}


def check_formats(formats: Sequence[str]) -> None:
    """Refuse unknown formats before any input is read: a typo must not cost a long run."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format {', '.join(map(repr, bad))}; expected json, csv or md")


def render(records: Sequence[dict[str, Any]], fmt: str) -> str:
    check_formats([fmt])
    return FORMATS[fmt](records)


class VideoSink:
    """Writes the annotated frames of one video at a time to its own .mp4 (a temp file until
    the video's last frame), so a stopped run keeps every video it finished."""

    def __init__(self):
        self.open: tuple[str, Any, Path, Path] | None = None  # video, writer, tmp, final
        self.done: list[Path] = []

    def write(self, video: str, final: Path, frame_rgb: np.ndarray, fps: float) -> None:
        """Add a frame of ``video``; its first frame finishes the previous video and opens
        ``final`` (written as a temp file)."""
        import cv2

        if self.open is not None and self.open[0] != video:
            self.finish()
        if self.open is None:
            tmp = final.with_name(f".{final.name}.tmp.mp4")
            final.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame_rgb.shape[:2]
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise RuntimeError(f"{final}: OpenCV cannot write mp4v video here")
            self.open = (video, writer, tmp, final)
        self.open[1].write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))

    def finish(self) -> None:
        """Give the open video its final name."""
        if self.open is not None:
            _, writer, tmp, final = self.open
            self.open = None
            writer.release()
            os.replace(tmp, final)
            self.done.append(final)

    def close(self, ok: bool = True) -> list[Path]:
        """Finish the open video, or after a failure (``ok=False``) drop its partial file;
        return the finished videos."""
        if ok:
            self.finish()
        elif self.open is not None:
            _, writer, tmp, _ = self.open
            self.open = None
            writer.release()
            tmp.unlink(missing_ok=True)
        return self.done


class OutputNames:
    """One output name per input, unique within a run: ``a/x.jpg`` and ``b/x.jpg`` give ``x``
    and ``x_2``, a real ``x_2.jpg`` after them ``x_2_2``; each array gets its own ``array_N``."""

    def __init__(self):
        self.given: dict[str, str] = {}
        self.taken: set[str] = set()

    def __call__(self, path: str | None) -> str:
        if path in self.given:
            return self.given[path]
        stem = Path(path).stem if path else "array"
        name, k = stem, 2
        # casefolded: on a case-insensitive disk (macOS, Windows) X.jpg and x.png would both
        # write annotated/x.jpg
        while name.casefold() in self.taken:
            name, k = f"{stem}_{k}", k + 1
        self.taken.add(name.casefold())
        if path:
            self.given[path] = name
        return name


ANNOTATED = "annotated"  # folder of annotated images under --out
VIDEO_SUFFIX, TIMELINE_SUFFIX = "_annotated.mp4", "_timeline.png"  # after a video's name


def is_run_output(relative: Path) -> bool:
    """Is ``relative`` (to an output folder) a file that :func:`write_predictions` writes?"""
    if len(relative.parts) > 1:
        return relative.parts[0] == ANNOTATED
    return relative.name.endswith((VIDEO_SUFFIX, TIMELINE_SUFFIX))


def write_text(path: Path, text: str) -> Path:
    # a file name that is not UTF-8 (caf\xe9.jpg from a Latin-1 disk) reaches Python as a
    # lone surrogate, which UTF-8 cannot encode: written as a visible \udce9 escape instead
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))
    return path


def write_predictions(
    predictions,
    out_dir: str | Path,
    formats: Sequence[str] = ("json", "csv", "md"),
    annotate: bool = True,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Consume ``predictions`` and write predictions.{json,csv,md}, annotated images and
    videos and, for videos, an emotion timeline under ``out_dir``. Returns (records, files).
    If ``predictions`` raises (or Ctrl-C), or a predictions file cannot be written, the
    records so far go to predictions.partial.*. After a successful run, the predictions files
    of an earlier run into ``out_dir`` are gone, those of formats not asked for too."""
    from .plots import save_figure, timeline_figure

    out = Path(out_dir)
    check_formats(formats)
    records: list[dict[str, Any]] = []
    files: list[Path] = []
    sink = VideoSink()
    name = OutputNames()
    try:
        for pred in predictions:
            records.append(pred.to_dict())
            if not annotate or pred.error:
                continue
            if pred.frame is not None:
                video = pred.path or "video"
                final = out / f"{name(video)}{VIDEO_SUFFIX}"
                # a broken header's 90,000 fps: OpenCV refuses to write 65,536 and above
                sink.write(video, final, pred.plot(), min(pred.fps or 10.0, 1000.0))
            else:
                sink.finish()  # the video before this image is complete
                files.append(pred.save(out / ANNOTATED / f"{name(pred.path)}.jpg"))
        # the predictions before the last video: one that fails to finish costs no results
        for fmt in formats:
            files.append(write_text(out / f"predictions.{fmt}", FORMATS[fmt](records)))
    except BaseException:
        sink.close(ok=False)  # a half-written video never takes the final name
        # a stopped or failed run keeps what it classified, under names that say so (the
        # failure itself, a full disk say, may stop these too: it is the error to report).
        # A final file this loop already wrote stays: it may be the only complete copy.
        for fmt in formats if records else ():
            with contextlib.suppress(OSError):
                write_text(out / f"predictions.partial.{fmt}", FORMATS[fmt](records))
        raise
    for fmt in FORMATS:  # an earlier run's, stopped or of other formats: they would
        # sit beside this run's results and disagree with them
        (out / f"predictions.partial.{fmt}").unlink(missing_ok=True)
        if fmt not in formats:
            (out / f"predictions.{fmt}").unlink(missing_ok=True)
    files += sink.close()
    for video in sorted({r["path"] for r in records if "frame" in r}):
        rows = [r for r in records if r["path"] == video and "frame" in r and r["faces"]]
        if rows:  # the first (leftmost) face of each frame
            times = np.array([r["time"] if r["time"] is not None else r["frame"] for r in rows])
            probs = np.array([[r["faces"][0]["emotions"][e] for e in EMOTIONS] for r in rows])
            fig = timeline_figure(times, probs, title=Path(video).name)
            files.append(save_figure(fig, out / f"{name(video)}{TIMELINE_SUFFIX}"))
    return records, files
