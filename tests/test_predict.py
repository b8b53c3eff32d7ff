import csv
import io
import json
import re
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from ferlab import EMOTIONS, load_model
from ferlab.classifier import shipped_models
from ferlab.media import count_frames, read_rgb
from ferlab.outputs import to_csv, to_markdown, write_predictions
from ferlab.predict import Face, Prediction, Predictor

FACE_REGION = (150, 20, 110, 130)  # x, y, w, h around the astronaut's face


def inside(box, region=FACE_REGION) -> bool:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    rx, ry, rw, rh = region
    return rx <= cx <= rx + rw and ry <= cy <= ry + rh


def write_video(path, astronaut, n=12, fps=10.0):
    """A real-face video: a 256x256 window sliding across the astronaut photo."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (256, 256))
    for i in range(n):
        frame = astronaut[0:256, 60 + 4 * i : 316 + 4 * i]
        writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_photo_gives_one_face_with_probabilities(tiny_model, astronaut):
    (pred,) = list(Predictor(tiny_model)(astronaut))
    assert len(pred.faces) == 1 and inside(pred.faces[0].box)
    face = pred.faces[0]
    assert face.probs.shape == (7,) and abs(face.probs.sum() - 1) < 1e-5
    assert face.label in EMOTIONS and face.confidence == pytest.approx(face.probs.max())
    d = face.to_dict()
    assert list(d) == ["box", "emotions"] and list(d["emotions"]) == list(EMOTIONS)
    assert pred.plot().shape == astronaut.shape


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_models_read_the_astronauts_smile(astronaut, name):
    # a real photo from outside FER-2013, through detection and cropping; `default` is what
    # a Predictor loads when given no model
    (pred,) = list(Predictor(None if name == "default" else load_model(name))(astronaut))
    assert [f.label for f in pred.faces] == ["happy"]
    assert pred.faces[0].confidence > 0.5


def test_folder_recursive_batched_and_faceless(tiny_model, photo_dir):
    preds = list(Predictor(tiny_model, batch_size=1)(photo_dir))
    names = [p.path.split("/")[-1] for p in preds]
    assert names == ["astronaut.jpg", "coffee.png", "astronaut2.png"]
    assert [len(p.faces) for p in preds] == [1, 0, 1]
    # batching across images does not change results
    again = list(Predictor(tiny_model, batch_size=64)(photo_dir))
    np.testing.assert_allclose(preds[0].faces[0].probs, again[0].faces[0].probs, atol=1e-6)
    assert count_frames(photo_dir) == 3


def test_folders_take_every_photo_format_that_is_decoded(tiny_model, tmp_path):
    crops = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    for crop, name in zip(crops, ["a.pgm", "b.ppm", "c.webp", "d.tif"], strict=True):
        Image.fromarray(crop).convert("RGB" if name == "b.ppm" else "L").save(tmp_path / name)
    (tmp_path / "e.txt").write_text("not an image")
    preds = list(Predictor(tiny_model, detector="none")(tmp_path))
    assert [p.path.split("/")[-1] for p in preds] == ["a.pgm", "b.ppm", "c.webp", "d.tif"]
    assert all(len(p.faces) == 1 and not p.error for p in preds)


def test_no_detect_treats_inputs_as_crops(tiny_model):
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    preds = list(Predictor(tiny_model, detector="none")(list(crops)))
    assert [p.faces[0].box for p in preds] == [(0, 0, 48, 48)] * 3
    np.testing.assert_allclose(
        np.stack([p.faces[0].probs for p in preds]), tiny_model.predict_proba(crops), atol=1e-5
    )
    with pytest.raises(ValueError, match="unknown tta 'crop'"):
        Predictor(tiny_model, detector="none", tta="crop")


def test_bad_files_are_reported_and_skipped(tiny_model, photo_dir):
    (photo_dir / "notes.jpg").write_text("not an image")
    preds = list(Predictor(tiny_model)(photo_dir))
    bad = [p for p in preds if p.error]
    assert len(preds) == 4 and len(bad) == 1
    assert "notes.jpg: not a readable image" in bad[0].error and bad[0].faces == []


def test_an_image_detection_refuses_fails_alone(tiny_model, tmp_path, astronaut, monkeypatch):
    import ferlab.predict

    Image.fromarray(astronaut).save(tmp_path / "astronaut.jpg")
    Image.fromarray(np.zeros((1, 5000, 3), np.uint8)).save(tmp_path / "strip.png")
    Image.fromarray(np.zeros((5000, 1, 3), np.uint8)).save(tmp_path / "tall.png")
    # the strip once crashed the run in cv2.resize; now it is an image without a face
    preds = list(Predictor(tiny_model)(tmp_path))
    assert [(len(p.faces), p.error) for p in preds] == [(1, None), (0, None), (0, None)]

    # whatever else detection or cropping refuses fails that image alone, in one line
    real = ferlab.faces.crop_faces

    def crop_faces(image, boxes, margin):
        if image.shape[0] == 1:
            cv2.resize(image, None, fx=1e-4, fy=1e-4)  # cv2.error, a message of two lines
        if image.shape[1] == 1:
            raise ValueError("box outside the image")
        return real(image, boxes, margin)

    monkeypatch.setattr(ferlab.faces, "crop_faces", crop_faces)
    preds = list(Predictor(tiny_model)([tmp_path, np.zeros((1, 9, 3), np.uint8)]))
    assert len(preds[0].faces) == 1 and preds[0].error is None
    errors = [p.error or "" for p in preds[1:]]
    assert errors[0].startswith(f"{tmp_path / 'strip.png'}: face detection failed (OpenCV")
    assert errors[1] == f"{tmp_path / 'tall.png'}: face detection failed (box outside the image)"
    assert errors[2].startswith("array: face detection failed (") and preds[3].path is None
    assert all("\n" not in e for e in errors) and all(p.faces == [] for p in preds[1:])


def test_a_bad_header_error_names_the_file(tiny_model, photo_dir):
    # Pillow raises ValueError on these headers: the message once lacked the file's name
    (photo_dir / "maxval.pgm").write_bytes(b"P5\n1 1\n70000\n\x00\x00")
    (photo_dir / "header.ppm").write_bytes(b"P6")
    with pytest.raises(ValueError, match=r"maxval\.pgm: not a readable image \(maxval must"):
        read_rgb(photo_dir / "maxval.pgm")
    bad = {p.path: p.error for p in Predictor(tiny_model)(photo_dir) if p.error}
    assert sorted(bad) == [str(photo_dir / "header.ppm"), str(photo_dir / "maxval.pgm")]
    assert all(e.startswith(f"{path}: not a readable image (") for path, e in bad.items())


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (8000, 6000)).save(path)  # 48 Mpx of zeros: a tiny file, a huge image
    with pytest.raises(ValueError, match="over the limit"):
        read_rgb(path)


def test_video_streams_every_kth_frame_with_times(tiny_model, tmp_path, astronaut):
    video = write_video(tmp_path / "clip.mp4", astronaut)
    assert count_frames(video, every=3) == 4
    preds = list(Predictor(tiny_model)(video, every=3, smooth=0.5))
    assert [p.frame for p in preds] == [0, 3, 6, 9]
    assert [p.time for p in preds] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert all(len(p.faces) == 1 for p in preds)
    rows = list(csv.DictReader(io.StringIO(to_csv([p.to_dict() for p in preds]))))
    assert [(r["frame"], r["time"]) for r in rows] == [
        ("0", "0.000"),
        ("3", "0.300"),
        ("6", "0.600"),
        ("9", "0.900"),
    ]
    # the same video twice (as a file and inside its folder) is read once: a second pass
    # would be appended to the same annotated video and timeline
    again = list(Predictor(tiny_model)([tmp_path, video], every=3))
    assert [p.frame for p in again] == [0, 3, 6, 9]
    assert count_frames([tmp_path, video], every=3) == 4


def test_smoothing_blends_matched_faces(tiny_model, tmp_path, astronaut):
    video = write_video(tmp_path / "clip.mp4", astronaut, n=6)
    raw = list(Predictor(tiny_model)(video))
    smooth = list(Predictor(tiny_model)(video, smooth=0.5))
    np.testing.assert_allclose(smooth[0].faces[0].probs, raw[0].faces[0].probs, atol=1e-6)
    expected = 0.5 * smooth[0].faces[0].probs + 0.5 * raw[1].faces[0].probs
    np.testing.assert_allclose(smooth[1].faces[0].probs, expected / expected.sum(), atol=1e-5)


def test_outputs_written_under_out(tiny_model, tmp_path, photo_dir, astronaut):
    video = write_video(photo_dir / "clip.mp4", astronaut, n=4)
    records, files = write_predictions(Predictor(tiny_model)(photo_dir), tmp_path / "out")
    names = sorted(f.relative_to(tmp_path / "out").as_posix() for f in files)
    assert names == [
        "annotated/astronaut.jpg",
        "annotated/astronaut2.jpg",
        "annotated/coffee.jpg",
        "clip_annotated.mp4",
        "clip_timeline.png",
        "predictions.csv",
        "predictions.json",
        "predictions.md",
    ]
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip_annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()
    assert video.exists()
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(data) == 3 + 4 and data[0]["faces"][0]["box"] == list(records[0]["faces"][0]["box"])
    md = (tmp_path / "out" / "predictions.md").read_text()
    assert "- faces: 6" in md and "- without a face: 1" in md


def test_a_box_the_height_of_the_image_keeps_its_label_and_bars_in_the_image():
    from ferlab.annotate import COLORS, MIN_SIDE, draw_faces

    # every --no-detect 48x48 crop: the label fits neither above nor below the box, and was
    # drawn below the image, out of sight; at 48 px only 4 of the 7 bars fitted
    probs = np.full(7, 0.02, np.float32)
    probs[EMOTIONS.index("happy")] = 0.88
    image = np.full((48, 48, 3), 128, np.uint8)
    image[20, 30] = 7  # one marked pixel, to follow through the enlargement
    out = draw_faces(image, [Face((0, 0, 48, 48), probs)])
    k = MIN_SIDE // 48  # enlarged by a whole factor, pixels repeated
    assert out.shape == (48 * k, 48 * k, 3) and (out[20 * k : 21 * k, 30 * k : 31 * k] == 7).all()
    # the label's background, inside the box at its top (the box's own border is a thin line)
    label = np.flatnonzero((out[:, 5:] == COLORS["happy"]).all(axis=2).sum(axis=1) > 20)
    assert label.size and label.min() <= 2 and label.max() < out.shape[0] // 4
    # all 7 bars, below the label, not over it: each starts with its dark track
    track = (out == (40, 40, 40)).all(axis=2)
    rows = np.flatnonzero(track.any(axis=1))
    assert rows.size and rows.min() > label.max()
    starts = np.flatnonzero(np.diff(track.any(axis=1).astype(int)) == 1)
    assert len(starts) + (track[0].any()) == 7
    # an image large enough is annotated at its own size, and a thin one is not blown up
    assert draw_faces(np.zeros((300, 400, 3), np.uint8), []).shape == (300, 400, 3)
    assert draw_faces(np.zeros((4, 1200, 3), np.uint8), []).shape == (12, 3600, 3)


def test_markdown_summary_counts():
    faces = [Face((0, 0, 1, 1), np.eye(7, dtype=np.float32)[i]) for i in (3, 3, 4)]
    pred = Prediction("a.jpg", None, np.zeros((1, 1, 3), np.uint8), faces)
    md = to_markdown([pred.to_dict()])
    assert "| happy | 2 | 66.7% | 0.667 |" in md and "| sad | 1 | 33.3% | 0.333 |" in md


def test_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="every must be >= 1"):  # at the call, not when iterated
        Predictor(tiny_model)(np.zeros((8, 8, 3), np.uint8), every=0)
    with pytest.raises(ValueError, match="smooth must be in"):
        Predictor(tiny_model)(np.zeros((8, 8, 3), np.uint8), smooth=1.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Predictor(tiny_model, batch_size=0)
    with pytest.raises(TypeError, match="unsupported source int"):
        list(Predictor(tiny_model)(5))
    blank = list(Predictor(tiny_model)(np.zeros((100, 100, 3), np.uint8)))
    assert blank[0].faces == []


def test_cli_predict_formats_and_exit_codes(tmp_path, photo_dir, tiny_model):
    import shutil
    import subprocess

    from ferlab.export import export_safetensors

    weights, _ = export_safetensors(tiny_model, tmp_path / "tiny")
    ferlab = shutil.which("ferlab")
    assert ferlab

    def run(*args):
        return subprocess.run([ferlab, "predict", *args], capture_output=True, text=True)

    r = run(str(photo_dir / "astronaut.jpg"), "--model", str(weights), "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 1 and rows[0]["path"].endswith("astronaut.jpg")
    (photo_dir / "broken.png").write_bytes(b"\x89PNG nope")
    r = run(
        str(photo_dir),
        "--model",
        str(weights),
        "--out",
        str(tmp_path / "o"),
        "--format",
        "json,md",
    )
    assert r.returncode == 1
    assert r.stderr.count("error:") == 1 and "broken.png: not a readable image" in r.stderr
    assert len(json.loads((tmp_path / "o" / "predictions.json").read_text())) == 4
    assert not (tmp_path / "o" / "predictions.csv").exists()  # --format picked two
    r = run(str(photo_dir / "astronaut.jpg"), "--model", str(weights), "--out", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr  # --out without --format: the library's three files
    assert sorted(p.name for p in (tmp_path / "d").glob("predictions.*")) == [
        "predictions.csv",
        "predictions.json",
        "predictions.md",
    ]
    # a rerun with fewer formats leaves no earlier csv or md to disagree with its json
    r = run(
        str(photo_dir), "--model", str(weights), "--out", str(tmp_path / "d"), "--format", "json"
    )
    assert r.returncode == 1, r.stderr  # broken.png
    assert [p.name for p in (tmp_path / "d").glob("predictions.*")] == ["predictions.json"]
    for args, message in [
        (("--format", "xml"), "unknown format 'xml'; expected json, csv or md"),
        (("--format", "csv,md"), "--format csv,md: several formats need --out (stdout takes one)"),
        (("--every", "0"), "every must be >= 1, got 0"),
    ]:
        r = run(str(photo_dir), "--model", str(weights), *args)
        assert r.returncode == 2 and r.stderr.strip() == f"error: {message}", r.stderr
    r = run(str(photo_dir / "astronaut.jpg"), "--model", str(weights), "--runtime", "onnx")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)[0]["faces"]) == 1


def test_cli_json_on_stdout_ends_with_a_newline(tmp_path, astronaut, tiny_model):
    from typer.testing import CliRunner

    from ferlab.cli import app
    from ferlab.export import export_safetensors

    weights, _ = export_safetensors(tiny_model, tmp_path / "tiny")
    Image.fromarray(astronaut).save(tmp_path / "a.jpg")
    args = ["predict", str(tmp_path / "a.jpg"), "--model", str(weights)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith("]\n") and len(json.loads(r.stdout)) == 1  # as CSV and md end
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--format", "json"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "o" / "predictions.json").read_text()
    assert text.endswith("]\n") and len(json.loads(text)) == 1


def test_cli_predict_twice_into_its_input_folder_reads_only_the_inputs(
    tmp_path, astronaut, tiny_model, caplog
):
    from typer.testing import CliRunner

    from ferlab.cli import app
    from ferlab.export import export_safetensors

    weights, _ = export_safetensors(tiny_model, tmp_path / "tiny")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "X.jpg")
    Image.fromarray(astronaut[:300, :300]).save(photos / "x.png")
    write_video(photos / "clip.mp4", astronaut, n=3)
    inputs = [str(photos / n) for n in ("X.jpg", "clip.mp4", "x.png")]
    for _ in range(2):  # the second run once read the first's annotated images and video
        r = CliRunner().invoke(
            app, ["predict", str(photos), "--model", str(weights), "--out", str(photos / "res")]
        )
        assert r.exit_code == 0, r.output
        records = json.loads((photos / "res" / "predictions.json").read_text())
        assert sorted({d["path"] for d in records}) == inputs and len(records) == 2 + 3
    # X.jpg and x.png: one file on a case-insensitive disk if both were annotated/x.jpg
    annotated = sorted(p.name for p in (photos / "res" / "annotated").iterdir())
    assert annotated == ["X.jpg", "x_2.jpg"]
    # --out the input folder itself: its annotated copies, video and timeline were read
    # back as inputs; hidden files (macOS's ._X.jpg, .thumbnails/) were errors or duplicates
    shutil.rmtree(photos / "res")
    (photos / "._X.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (photos / ".thumbnails").mkdir()
    Image.fromarray(astronaut[:100, :100]).save(photos / ".thumbnails" / "X.jpg")
    for _ in range(2):
        caplog.clear()
        r = CliRunner().invoke(
            app, ["predict", str(photos), "--model", str(weights), "--out", str(photos)]
        )
        assert r.exit_code == 0, r.output
        records = json.loads((photos / "predictions.json").read_text())
        assert sorted({d["path"] for d in records}) == inputs and len(records) == 2 + 3
    assert (photos / "clip_annotated.mp4").is_file() and (photos / "clip_timeline.png").is_file()
    # what was skipped is said: a user's own file named like an output is among it
    assert caplog.text.count(f"{photos}: skipped 4 file(s) that a run writes into it") == 1
    assert "annotated/X.jpg" in caplog.text and "choose another --out" in caplog.text


def test_cli_refuses_no_detect_with_a_detector(tmp_path):
    from typer.testing import CliRunner

    from ferlab.cli import app

    # --detector was ignored without a word; the model does not exist: the check is first
    args = ["predict", "x.jpg", "--model", "no-such.pt", "--no-detect", "--detector", "dlib"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "--no-detect and --detector dlib: choose one" in str(r.exception)


def test_cli_video_every_format(tmp_path, astronaut, tiny_model):
    from typer.testing import CliRunner

    from ferlab.cli import app
    from ferlab.export import export_safetensors

    weights, _ = export_safetensors(tiny_model, tmp_path / "tiny")
    video = write_video(tmp_path / "clip.mp4", astronaut, n=6)
    runner = CliRunner()
    for fmt in ("json", "csv", "md"):
        r = runner.invoke(
            app, ["predict", str(video), "--model", str(weights), "--every", "2", "--format", fmt]
        )
        assert r.exit_code == 0, r.output
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(r.stdout)))
            assert [row["frame"] for row in rows] == ["0", "2", "4"]
        elif fmt == "json":
            assert [d["frame"] for d in json.loads(r.stdout)] == [0, 2, 4]
        else:
            assert "- images or frames: 3" in r.stdout and "- faces: 3" in r.stdout
    r = runner.invoke(
        app,
        [
            "predict",
            str(video),
            "--model",
            str(weights),
            "--smooth",
            "0.5",
            "--out",
            str(tmp_path / "v"),
            "--format",
            "csv,json,md",
        ],
    )
    assert r.exit_code == 0, r.output
    for name in ("clip_annotated.mp4", "clip_timeline.png", "predictions.csv", "predictions.md"):
        assert (tmp_path / "v" / name).is_file(), name


def test_stopped_run_keeps_its_results_and_finished_videos_only(tiny_model, tmp_path, astronaut):
    done = write_video(tmp_path / "done.mp4", astronaut, n=3)
    video = write_video(tmp_path / "clip.mp4", astronaut, n=4)

    def broken():
        yield from Predictor(tiny_model)([done, video])
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_predictions(broken(), out, formats=("json", "csv"))
    # the video finished before Ctrl-C keeps all its frames; the half-written one is dropped
    assert [p.name for p in out.glob("*.mp4")] == ["done_annotated.mp4"]
    cap = cv2.VideoCapture(str(out / "done_annotated.mp4"))
    assert sum(1 for _ in iter(lambda: cap.read()[0], False)) == 3
    assert list(out.glob(".*")) == []
    # the frames classified before Ctrl-C, named partial, never as a finished run
    assert not (out / "predictions.json").exists()
    kept = json.loads((out / "predictions.partial.json").read_text())
    assert [r["frame"] for r in kept] == [0, 1, 2, 0, 1, 2, 3] and len(kept[0]["faces"]) == 1
    assert (out / "predictions.partial.csv").is_file()
    # a finished rerun into the same folder replaces the stopped run's partial files
    write_predictions(Predictor(tiny_model)(done), out, formats=("json",))
    assert sorted(p.name for p in out.glob("predictions*")) == ["predictions.json"]


def test_an_unwritable_predictions_file_keeps_the_results(tiny_model, tmp_path, astronaut):
    """A folder in the way of predictions.json cost every result after the work, with the
    hidden temp file's name in the error."""
    video = write_video(tmp_path / "clip.mp4", astronaut, n=3)
    out = tmp_path / "out"
    (out / "predictions.json").mkdir(parents=True)
    where = re.escape(str(out / "predictions.json"))
    with pytest.raises(OSError, match=rf"^\[Errno 21\] {where}: cannot write it"):
        write_predictions(Predictor(tiny_model)(video), out, formats=("csv", "json", "md"))
    kept = json.loads((out / "predictions.partial.json").read_text())
    assert [r["frame"] for r in kept] == [0, 1, 2]
    assert (out / "predictions.partial.md").is_file() and (out / "predictions.csv").is_file()
    assert list(out.glob(".*")) == [] and list(out.glob("*.mp4")) == []


def test_same_names_in_two_folders_keep_every_output(tiny_model, tmp_path, astronaut):
    """a/clip.mp4 and b/clip.mp4 once shared one temp file, and the run lost its results."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_video(tmp_path / d / "clip.mp4", astronaut, n=3)
        Image.fromarray(astronaut).save(tmp_path / d / "x.jpg")
    Image.fromarray(astronaut).save(tmp_path / "x_2.jpg")  # the name a duplicate would take
    sources = [tmp_path / "a", tmp_path / "b", tmp_path / "x_2.jpg"]
    records, files = write_predictions(Predictor(tiny_model)(sources), tmp_path / "out")
    names = sorted(f.relative_to(tmp_path / "out").as_posix() for f in files)
    assert names == [
        "annotated/x.jpg",
        "annotated/x_2.jpg",
        "annotated/x_2_2.jpg",
        "clip_2_annotated.mp4",
        "clip_2_timeline.png",
        "clip_annotated.mp4",
        "clip_timeline.png",
        "predictions.csv",
        "predictions.json",
        "predictions.md",
    ]
    for video in ("clip_annotated.mp4", "clip_2_annotated.mp4"):
        cap = cv2.VideoCapture(str(tmp_path / "out" / video))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
        cap.release()
    assert len(records) == 2 * (3 + 1) + 1
    _, files = write_predictions(Predictor(tiny_model)([astronaut, astronaut]), tmp_path / "arr")
    assert sorted(f.name for f in files if f.parent.name == "annotated") == [
        "array.jpg",
        "array_2.jpg",
    ]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from ferlab.serve.inputs import decode_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    for rgb in (read_rgb(path), decode_image(path.read_bytes(), 10**6, 10**6)):
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(rgb[0, :, 0], np.round(ramp[0] / 257).astype(np.uint8))


def test_an_empty_folder_is_an_error_not_an_empty_run(tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    preds = list(Predictor(tiny_model)(tmp_path / "empty"))
    assert len(preds) == 1 and preds[0].faces == []
    assert preds[0].error.startswith(f"{tmp_path / 'empty'}: no images or videos found")


def test_pending_images_are_bounded_in_bytes(tiny_model, photo_dir, monkeypatch):
    """Images wait for a batch of faces to fill; a byte budget flushes them early."""
    import ferlab.predict

    calls = []

    class Counting:
        classes, name = tiny_model.classes, tiny_model.name

        def predict_proba(self, faces, batch_size=256, tta=None):
            calls.append(len(faces))
            return tiny_model.predict_proba(faces, batch_size, tta)

    assert len(list(Predictor(Counting())(photo_dir))) == 3
    assert len(calls) == 1  # three images, two faces: one model call
    calls.clear()
    monkeypatch.setattr(ferlab.predict, "MAX_PENDING_BYTES", 1)
    assert len(list(Predictor(Counting())(photo_dir))) == 3
    assert calls == [1, 1]  # flushed after each image; the faceless one needs no call


def test_outputs_survive_odd_names_sizes_and_frame_rates(tiny_model, tmp_path, astronaut):
    """A Latin-1 file name cost the CSV and Markdown (UTF-8 cannot encode it); a panorama
    past JPEG's 65,500 px and a video header's 90,000 fps stopped the whole run."""
    photos = tmp_path / "photos"
    photos.mkdir()
    latin1 = photos / "caf\udce9.jpg"  # bytes b"caf\xe9.jpg" on disk, as Python sees them
    Image.fromarray(astronaut).save(latin1)
    wide = Prediction("wide.png", None, np.zeros((8, 66_000, 3), np.uint8))
    fast = Prediction("fast.mp4", 0, astronaut[:64, :64], time=0.0, fps=90_000.0)
    preds = [*Predictor(tiny_model)(photos), wide, fast]
    records, _ = write_predictions(preds, tmp_path / "out")
    assert len(records) == 3 and not any(r.get("error") for r in records)
    text = (tmp_path / "out" / "predictions.csv").read_text()
    assert "caf\\udce9.jpg" in text  # a visible escape, in a file that stays UTF-8
    assert Image.open(tmp_path / "out" / "annotated" / "wide.jpg").size == (65_500, 8)
    assert (tmp_path / "out" / "fast_annotated.mp4").stat().st_size > 0


def test_a_crowd_is_classified_in_batches_of_batch_size(tiny_model, tmp_path, astronaut):
    """A group photo sent all its faces to the model in one call, whatever --batch-size."""
    sizes = []

    class Recording:
        classes, name = tiny_model.classes, tiny_model.name

        def predict_proba(self, faces, batch_size=256, tta=None):
            sizes.append(batch_size)
            return tiny_model.predict_proba(faces, batch_size, tta)

    class Crowd:
        name = "crowd"

        def detect(self, image):
            return [(10 * i, 10, 40, 40) for i in range(5)]

    (pred,) = Predictor(Recording(), detector=Crowd(), batch_size=2)(astronaut)
    assert len(pred.faces) == 5 and sizes == [2]
