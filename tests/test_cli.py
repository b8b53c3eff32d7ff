import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferlab import cli

runner = CliRunner()


def run_ferlab(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The real entry point, as a user runs it (``env``: variables to set)."""
    exe = shutil.which("ferlab")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "ferlab", *args]
    env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))


def test_data_info_table_and_plots(tiny_csv, tmp_path):
    r = run_ferlab("data", "info", str(tiny_csv), "--plot", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if "Training" in line or "PublicTest" in line]
    assert len(lines) == 2 and all(line.split("│")[-2].strip() == "14" for line in lines)
    assert (tmp_path / "plots" / "class_distribution.png").is_file()
    assert (tmp_path / "plots" / "samples.png").is_file()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('emotion,pixels,Usage\n7,"1 2",Training\n')
    r = run_ferlab("data", "info", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert f"{bad}, line 2: 'emotion' is '7', expected 0..6" in r.stderr


def test_python_dash_m_and_models():
    r = subprocess.run(
        [sys.executable, "-m", "ferlab", "models"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "vgg19" in r.stdout.split()


def test_train_flags_and_set_reach_the_config(tiny_csv, tmp_path, monkeypatch):
    seen = {}

    def fake_train(cfg, resume=None, runtime=None, nproc=1):
        seen.update(cfg=cfg, resume=resume, runtime=runtime, nproc=nproc)
        return Path("runs/x")

    monkeypatch.setattr(sys.modules["ferlab.train"], "train", fake_train)
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("model: vggnet\nlr: 0.01\n")
    r = runner.invoke(
        cli.app,
        [
            "train",
            str(cfgfile),
            "--epochs",
            "3",
            "--set",
            "lr=1e-3",
            "--set",
            "augment=false",
            "--data",
            str(tiny_csv),
            "--nproc",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert seen["nproc"] == 2
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.augment, cfg.data) == (
        "vggnet",
        3,
        1e-3,
        False,
        str(tiny_csv),
    )
    # a key given as a flag and as --set: the flag won without a word
    r = runner.invoke(cli.app, ["train", "--data", "a.csv", "--set", "data=b.csv", "--lr", "1"])
    assert r.exit_code != 0 and "--data and --set data=...: give data once" in str(r.exception)
    r = runner.invoke(cli.app, ["train", "--batch-size", "8", "--set", "batch_size=16"])
    assert "--batch-size and --set batch_size=...: give batch_size once" in str(r.exception)
    r = runner.invoke(cli.app, ["train", "--resume", "x", "--device", "cpu", "--set", "device=0"])
    assert "--device and --set device=...: give device once" in str(r.exception)
    r = runner.invoke(cli.app, ["train", "--resume", "runs/old", "--set", "threads=2"])
    assert r.exit_code == 0 and seen["resume"] == Path("runs/old")
    assert seen["runtime"] == {"threads": 2}


def test_train_then_evaluate_end_to_end(tiny_csv, tmp_path):
    out = tmp_path / "runs"
    r = run_ferlab(
        "train",
        "--data",
        str(tiny_csv),
        "--model",
        "vggnet_s",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--name",
        "e2e",
        "--out",
        str(out),
        "--set",
        "model_kwargs={widths: [4, 8, 8, 8]}",
    )
    assert r.returncode == 0, r.stderr
    assert (out / "e2e" / "best.pt").is_file()
    r = run_ferlab(
        "evaluate",
        str(out / "e2e"),
        "--data",
        str(tiny_csv),
        "--split",
        "PrivateTest",
        "--format",
        "json,md",
        "--out",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert sum(d["per_class"][c]["support"] for c in d["classes"]) == 14
    assert (tmp_path / "ev" / "metrics.md").is_file() and (
        tmp_path / "ev" / "confusion.png"
    ).is_file()
    r = run_ferlab("evaluate", str(out / "e2e"), "--data", str(tiny_csv), "--split", "Test")
    assert r.returncode == 2 and "unknown split 'Test'" in r.stderr
    assert "PrivateTest, train, val, test" in r.stderr  # a folder's names are offered too


def test_evaluate_takes_a_shipped_name(tiny_csv):
    r = run_ferlab("evaluate", "default", "--data", str(tiny_csv), "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert sum(d["per_class"][c]["support"] for c in d["classes"]) == 14


def test_unknown_override_exits_2(tiny_csv):
    r = run_ferlab("train", "--data", str(tiny_csv), "--set", "learning_rate=1")
    assert r.returncode == 2 and "unknown config key 'learning_rate'" in r.stderr


def test_missing_checkpoint_exits_2(tmp_path):
    r = run_ferlab("evaluate", str(tmp_path / "none.pt"))
    assert r.returncode == 2 and "checkpoint not found" in r.stderr


def test_messages_and_help_keep_their_brackets(tmp_path):
    # brackets in paths and pip extras are text, not Rich markup to be swallowed
    missing = tmp_path / "[seed 1]" / "none.pt"
    r = run_ferlab("evaluate", str(missing))
    assert r.returncode == 2 and f"{missing}" in r.stderr
    r = run_ferlab("export", "--help", env={"COLUMNS": "200"})  # no line wrapped inside it
    assert "[default: model]" in r.stdout


def test_resume_refuses_recipe_flags(tmp_path):
    r = run_ferlab("train", "--resume", str(tmp_path / "run"), "--epochs", "40")
    assert r.returncode == 2 and "drop ['epochs']" in r.stderr


def test_demo_is_the_readme_main_job(tmp_path):
    r = runner.invoke(cli.app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "177,66,95,95" in line)
    assert row.split()[1] == "happy"
    saved = json.loads((tmp_path / "demo" / "predictions.json").read_text())
    assert saved[0]["faces"][0]["box"] == [177, 66, 95, 95]
    assert (tmp_path / "demo" / "annotated" / "astronaut.jpg").is_file()


def test_serve_with_a_missing_model_exits_at_once(tmp_path):
    # a regression would start the server: the timeout ends the test, failed
    r = run_ferlab("serve", "--model", str(tmp_path / "missing.pt"), "--port", "0", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"model {tmp_path / 'missing.pt'}: no such checkpoint" in r.stderr
    assert "serving on" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--timeout", "0"], "serve: --timeout must be above 0, got 0.0"),
        (["--max-batch", "0"], "serve: --max-batch must be a whole number at least 1, got 0"),
        (["--max-pending-mb", "1"], "serve: --max-pending-mb must be at least the largest request"),
    ],
)
def test_serve_names_a_bad_setting_by_its_option(args, message):
    # the library's parameter is timeout_s; a user who typed --timeout should read --timeout
    r = run_ferlab("serve", "--port", "0", *args, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: {message}" in r.stderr and "timeout_s" not in r.stderr


@pytest.mark.parametrize(
    "fmt, message",
    [("json,xml", "unknown format 'xml'; expected json, csv or md"), ("json,csv", "need --out")],
)
def test_evaluate_checks_formats_before_the_model_loads(fmt, message):
    # the model does not exist: a format error proves the check comes first
    r = run_ferlab("evaluate", "no-such-model.pt", "--format", fmt)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_an_out_below_a_file_is_refused_before_any_work(tmp_path):
    """It failed after the work (an ensemble's calibration, a whole folder's predictions)
    with "[Errno 17] File exists"; the models here do not exist, so the --out check is first."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for args in (
        ["evaluate", "no-such.pt", "--out", str(afile)],
        ["predict", "no-such.jpg", "--model", "no-such.pt", "--out", str(afile / "res")],
        ["ensemble", "no-such.pt", "no-such.pt", "--out", str(afile / "ens")],
        ["export", "no-such.pt", "--out", str(afile / "m.onnx")],
        ["train", "--data", "no-such.csv", "--out", str(afile)],
        ["experiment", "no-such.yaml", "--out", str(afile / "x")],
        ["report", "no-such", "--out", str(afile / "rep")],
        ["demo", "--model", "no-such.pt", "--out", str(afile / "d")],
    ):
        r = run_ferlab(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert f"--out {afile}" in r.stderr and f"{afile} is a file, not a folder" in r.stderr
    r = run_ferlab("data", "info", "no-such.csv", "--plot", str(afile / "plots"))
    assert r.returncode == 2 and f"--plot {afile}/plots: {afile} is a file" in r.stderr
    # a detector that does not exist is refused before the demo writes its photo
    r = run_ferlab("demo", "--detector", "nope", "--out", str(tmp_path / "demo"))
    assert r.returncode == 2 and "nope" in r.stderr and not (tmp_path / "demo").exists()


def test_evaluate_on_a_folder_with_an_unknown_class(tmp_path):
    import numpy as np

    from conftest import save_image

    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for label in ("happy", "sad", "contempt"):
        for name in ("Training_0", "PublicTest_0", "PublicTest_1", "PublicTest_2"):
            face = rng.integers(0, 256, (60, 60), np.uint8)
            save_image(root / label / f"{name}.png", face)
    r = run_ferlab("evaluate", "default", "--data", str(root))
    assert r.returncode == 2 and "unknown class folder(s) ['contempt']" in r.stderr
    assert "--ignore-unknown for `ferlab evaluate`" in r.stderr
    args = ("evaluate", "default", "--data", str(root), "--format", "json")
    r = run_ferlab(*args, "--ignore-unknown")
    assert r.returncode == 0, r.stderr
    support = json.loads(r.stdout)["per_class"]
    assert support["happy"]["support"] == 3 and support["sad"]["support"] == 3
    # --out without --format writes every format, as predict does
    ev = tmp_path / "ev"
    r = run_ferlab("evaluate", "default", "--data", str(root), "--ignore-unknown", "--out", str(ev))
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in ev.iterdir()) == [
        "confusion.png",
        "metrics.csv",
        "metrics.json",
        "metrics.md",
    ]


def test_a_corrupt_video_is_one_line_without_ffmpegs_own(tmp_path):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for _ in range(30):
        writer.write(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    writer.release()
    cut = tmp_path / "cut.mp4"  # a download cut short: no index ("moov atom")
    cut.write_bytes((tmp_path / "v.mp4").read_bytes()[:3000])
    r = run_ferlab("predict", str(cut), "--model", "fast")
    assert r.returncode == 1 and f"{cut}: not a readable video" in r.stderr, r.stderr
    assert "moov atom" not in r.stderr, r.stderr


def test_the_shipped_default_fine_tunes_on_a_folder_of_faces(tmp_path):
    """The README's fine-tuning command, on a user's folder with one folder per emotion."""
    import torch

    from conftest import save_image, synthetic_rows
    from ferlab import EMOTIONS, load_model

    rows = [r for r in synthetic_rows(per_class=10) if r[2] == "Training"]
    for i, (label, img, _) in enumerate(rows):
        save_image(tmp_path / "faces" / EMOTIONS[label] / f"{i}.png", img)
    config = str(Path(__file__).parents[1] / "configs" / "finetune.yaml")
    out = tmp_path / "runs"
    args = ["train", config, "--data", str(tmp_path / "faces"), "--out", str(out)]
    r = run_ferlab(*args, "--epochs", "1", "--name", "ft", "--set", "split=stratified")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(out / "ft" / "best.pt", weights_only=True)
    assert ckpt["config"]["init"] == "default" and ckpt["model_name"] == "vggnet_s"
    assert ckpt["preprocess"] == load_model("default").preprocess
    assert load_model(out / "ft").predict_proba(rows[0][1]).shape == (1, 7)
    r = run_ferlab("evaluate", "default", "--data", str(tmp_path / "faces"), "--split", "all")
    assert r.returncode == 0 and "faces: 70" in r.stdout, r.stderr  # every face, unsplit
    r = run_ferlab(*args, "--model", "vggnet_s24", "--name", "other")
    assert r.returncode == 2 and not (out / "other").exists()
    assert r.stderr.strip().splitlines() == [
        "error: config init: default: is vggnet_s, the config trains vggnet_s24"
    ]
